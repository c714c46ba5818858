"""PersonalizeModule: fine-tuning a trained generator (stage 1 or meta) to one person's frames.

Plain reconstruction fine-tuning (the refine stage's non-adversarial losses), no discriminator: the
adaptation budget is seconds to minutes. `load_generator` reads any generator checkpoint of this project
(refine, meta, personalize) with weights_only=True; `learned_lr_scales` reads the per-tensor rate multipliers a
meta run with `meta.learn_inner_lr` learned, which fine-tuning then applies on top of its rate.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.losses.perceptual import build_perceptual
from src.models.generator import TalkingHeadGenerator, build_generator
from src.modules.common import ReconstructionMetrics, generator_inputs, groups_by_rate, reconstruction_losses, tensor_lr


def load_generator(checkpoint: str | Path, mesh_prior: bool | None = None) -> tuple[TalkingHeadGenerator, dict, int]:
    """(generator with the checkpoint's weights, its config, id_dim) from a refine/meta/personalize checkpoint.
    `mesh_prior`: None takes the checkpoint as it was trained; True or False requires it (an error otherwise:
    a residual flow trained on the mesh prior means nothing without it, and the reverse)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or holding objects weights_only refuses
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    hp = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    weights = {k[len("generator."):]: v for k, v in state.get("state_dict", {}).items() if k.startswith("generator.")} \
        if isinstance(state, dict) else {}
    if not weights or "cfg" not in hp:
        kind = "a warp-stage checkpoint (no refiner)" if any(k.startswith("warper.") for k in state.get("state_dict", {})) \
            else "not a generator checkpoint"
        raise UserError(f"{path} is {kind}: give a checkpoint of the refine, stage1, meta or personalize stage")
    cfg, id_dim = hp["cfg"], int(hp["id_dim"])
    if mesh_prior is not None:
        require_mesh_prior(path, cfg, mesh_prior)
    cfg["model"].setdefault("warp", {})["mesh_prior"] = mesh_prior_of(cfg)
    # keys added to the model section after the checkpoint was written take their defaults
    from src.config import CONFIG_DIR

    defaults = OmegaConf.load(CONFIG_DIR / "default.yaml").model
    cfg["model"] = OmegaConf.to_container(OmegaConf.merge(defaults, cfg["model"]), resolve=True)
    generator = build_generator(OmegaConf.create(cfg["model"]), id_dim)
    target = generator.state_dict()
    bad = sorted(set(target) ^ set(weights)) + sorted(k for k in set(target) & set(weights) if target[k].shape != weights[k].shape)
    if bad:
        raise UserError(f"{path}: generator weights do not fit its own config ({', '.join(bad[:4])} ...)")
    generator.load_state_dict(weights)
    return generator, cfg, id_dim


def mesh_prior_of(cfg: dict) -> bool:
    """Whether a checkpoint's config warps on the mesh prior; checkpoints written before the prior existed do not."""
    return bool(((cfg.get("model") or {}).get("warp") or {}).get("mesh_prior", False))


def require_mesh_prior(path: Path, trained_cfg: dict, wanted: bool, hint: str = "") -> None:
    """An error unless the checkpoint at `path` (its config `trained_cfg`) warps as `wanted`: a residual flow trained
    on the mesh prior means nothing without it, and weights of a learned-only flow run under it as a model nobody
    trained."""
    had = mesh_prior_of(trained_cfg)
    if had != wanted:
        raise UserError(f"{path} was trained {'with' if had else 'without'} the mesh prior "
                        f"(model.warp.mesh_prior={str(had).lower()}); it cannot be run {'without' if had else 'with'} "
                        f"it{hint}")


def learned_lr_scales(checkpoint: str | Path) -> dict[str, float] | None:
    """{generator tensor name: multiplier of the fine-tuning rate} learned by meta-training, or None when the
    checkpoint has none (stage 1, or meta without meta.learn_inner_lr)."""
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True, mmap=True)  # mmap: no weight copy
    scales = state.get("inner_lr_scale") if isinstance(state, dict) else None
    if scales is None:
        return None
    if not isinstance(scales, dict) or not all(isinstance(v, float) and v > 0 for v in scales.values()):
        raise UserError(f"{checkpoint}: inner_lr_scale is not a map of positive rate multipliers")
    return {str(k): float(v) for k, v in scales.items()}


def check_lr_scale(generator: TalkingHeadGenerator, lr_scale: dict[str, float] | None) -> None:
    """Learned multipliers must name exactly the generator's tensors (a meta run of this generator's config)."""
    if lr_scale is not None and set(lr_scale) != {n for n, _ in generator.named_parameters()}:
        raise UserError("the checkpoint's learned rate multipliers (inner_lr_scale) do not name this generator's tensors")


class PersonalizeModule(L.LightningModule):
    def __init__(self, cfg: dict, id_dim: int, lr: float, generator: TalkingHeadGenerator | None = None,
                 lr_scale: dict[str, float] | None = None):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "id_dim": id_dim, "lr": lr})
        self.cfg = OmegaConf.create(cfg)
        self.lr = lr
        self.lr_scale = lr_scale
        self.generator = generator if generator is not None else build_generator(self.cfg.model, id_dim)
        self.perceptual = build_perceptual(self.cfg.loss)
        self.val_metrics = ReconstructionMetrics()

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        out = self.generator(**generator_inputs(batch))
        losses = reconstruction_losses(self.cfg.refine, self.perceptual, out, batch["driving"],
                                       batch["driving_eye_mask"], batch["driving_mouth_mask"])
        return sum(losses.values()), out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["source"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self.model_step(batch)
        self.val_metrics.update(out["output"], batch["source"], batch["driving"], loss=loss)

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.log_to(self, prog_bar=("loss",))

    def param_lrs(self) -> dict[str, float]:
        """Each generator tensor's rate: lr (warp tensors at optim.warp_lr_mult of it) times its learned multiplier."""
        check_lr_scale(self.generator, self.lr_scale)
        scale = self.lr_scale or {}
        return {n: tensor_lr(n, self.lr, self.cfg.optim.warp_lr_mult) * scale.get(n, 1.0)
                for n, _ in self.generator.named_parameters()}

    def configure_optimizers(self):
        groups = groups_by_rate(dict(self.generator.named_parameters()), self.param_lrs())
        return torch.optim.Adam(groups, betas=tuple(self.cfg.optim.betas))
