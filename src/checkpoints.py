"""The checkpoint format: every read and write of a checkpoint of this project goes through here.

A checkpoint is a Lightning checkpoint dict, loaded with `weights_only=True` (tensors, numbers, strings, lists
and dicts only: nothing in it is executed). Its `state_dict` keys are prefixed by the LightningModule attribute
that holds the network (below); `hyper_parameters` holds the resolved config (`cfg`) and `id_dim`. A meta run
with learned rates adds `inner_lr_scale` (generator tensor name -> rate multiplier); a personalized one adds
`personalized`; an SR run's EMA weights sit in the EMA callback's state (`shadow`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.files import temporary_path

GENERATOR = "generator."          # the talking-head generator (refine, meta, personalize)
WARPER = "warper."                # the warping generator of the warp stage (inside a generator: generator.warper.)
DISCRIMINATOR = "discriminator."
SR_NET = "net."                   # TemporalSR
INNER_LOG_LR = "inner_log_lr"     # meta.learn_inner_lr: the log-multipliers as trained
INNER_LR_SCALE = "inner_lr_scale"  # ... and as multipliers, for fine-tuning


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint dict at `path`, weights only, or a UserError saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # not a torch file, truncated, or holding objects weights_only refuses
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint of this project (not a dict)")
    return state


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write a checkpoint dict atomically (a killed job never leaves a torn checkpoint under the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def generator_checkpoint(generator: torch.nn.Module, cfg: dict, id_dim: int, **extra) -> dict:
    """A generator checkpoint that load_generator reads (what personalize writes; tests build them too)."""
    return {"state_dict": {GENERATOR + k: v.detach().cpu() for k, v in generator.state_dict().items()},
            "hyper_parameters": {"cfg": cfg, "id_dim": int(id_dim)}, **extra}


def prefixed(state: dict, prefix: str) -> dict:
    """The state_dict entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.get("state_dict", {}).items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------ the mesh prior
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


# ------------------------------------------------------------------------------------------ generators
def load_generator(checkpoint: str | Path, mesh_prior: bool | None = None):
    """(generator with the checkpoint's weights, its config, id_dim) from a refine/meta/personalize checkpoint.
    `mesh_prior`: None takes the checkpoint as it was trained; True or False requires it (an error otherwise)."""
    from src.config import CONFIG_DIR
    from src.models.generator import build_generator

    path = Path(checkpoint)
    state = read_checkpoint(path)
    hp = state.get("hyper_parameters") or {}
    weights = prefixed(state, GENERATOR)
    if not weights or "cfg" not in hp:
        kind = ("a warp-stage checkpoint (no refiner)" if prefixed(state, WARPER) else "not a generator checkpoint")
        raise UserError(f"{path} is {kind}: give a checkpoint of the refine, stage1, meta or personalize stage")
    cfg, id_dim = hp["cfg"], int(hp["id_dim"])
    if mesh_prior is not None:
        require_mesh_prior(path, cfg, mesh_prior)
    cfg["model"].setdefault("warp", {})["mesh_prior"] = mesh_prior_of(cfg)
    # keys added to the model section after the checkpoint was written take their defaults
    defaults = OmegaConf.load(CONFIG_DIR / "default.yaml").model
    cfg["model"] = OmegaConf.to_container(OmegaConf.merge(defaults, cfg["model"]), resolve=True)
    generator = build_generator(OmegaConf.create(cfg["model"]), id_dim)
    target = generator.state_dict()
    bad = sorted(set(target) ^ set(weights)) + sorted(k for k in set(target) & set(weights)
                                                      if target[k].shape != weights[k].shape)
    if bad:
        raise UserError(f"{path}: generator weights do not fit its own config ({', '.join(bad[:4])} ...)")
    generator.load_state_dict(weights)
    return generator, cfg, id_dim


def learned_lr_scales(checkpoint: str | Path) -> dict[str, float] | None:
    """{generator tensor name: multiplier of the fine-tuning rate} learned by meta-training, or None when the
    checkpoint has none (stage 1, or meta without meta.learn_inner_lr)."""
    scales = read_checkpoint(checkpoint, mmap=True).get(INNER_LR_SCALE)  # mmap: no copy of the weights
    if scales is None:
        return None
    if not isinstance(scales, dict) or not all(isinstance(v, float) and v > 0 for v in scales.values()):
        raise UserError(f"{checkpoint}: {INNER_LR_SCALE} is not a map of positive rate multipliers")
    return {str(k): float(v) for k, v in scales.items()}


def check_lr_scale(generator: torch.nn.Module, lr_scale: dict[str, float] | None) -> None:
    """Learned multipliers must name exactly the generator's tensors (a meta run of this generator's config)."""
    if lr_scale is not None and set(lr_scale) != {n for n, _ in generator.named_parameters()}:
        raise UserError(f"the checkpoint's learned rate multipliers ({INNER_LR_SCALE}) do not name this generator's "
                        "tensors")


# ------------------------------------------------------------------------------------------ super-resolution
def load_sr(checkpoint: str | Path):
    """(TemporalSR with the checkpoint's EMA weights when present, its config)."""
    from src.models.temporal_sr import build_sr

    path = Path(checkpoint)
    state = read_checkpoint(path)
    weights = prefixed(state, SR_NET)
    cfg = (state.get("hyper_parameters") or {}).get("cfg")
    if not weights or not cfg or "sr" not in cfg.get("model", {}):
        raise UserError(f"{path} is not a super-resolution checkpoint (the sr stage writes them)")
    net = build_sr(OmegaConf.create(cfg["model"]))
    weights.update(ema_weights(state))
    net.load_state_dict(weights)
    return net.eval(), cfg


def ema_weights(state: dict) -> dict:
    """The averaged weights the EMA callback (callbacks/ema.py) keeps in a checkpoint, or {} without it."""
    for cb in (state.get("callbacks") or {}).values():
        if isinstance(cb, dict) and cb.get("shadow"):
            return dict(cb["shadow"])
    return {}


# ------------------------------------------------------------------------------------------ warm starts
def load_weights(module: torch.nn.Module, checkpoint: str | Path, src_prefix: str, dst_prefix: str = "",
                 missing_ok: bool = False) -> int:
    """Copy the weights under `src_prefix` of a checkpoint into `module` (under `dst_prefix`). Missing,
    unexpected or mis-shaped keys are an error that names them; a checkpoint with no weights under `src_prefix`
    at all is one too, unless missing_ok (then nothing is copied and 0 returned)."""
    path = Path(checkpoint)
    state = read_checkpoint(path)
    if "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    check_mesh_prior(module, state, path)
    source = {dst_prefix + k: v for k, v in prefixed(state, src_prefix).items()}
    target = {k: v for k, v in module.state_dict().items() if k.startswith(dst_prefix)}
    if not source and missing_ok:
        return 0
    if not source:
        raise UserError(f"{path} has no '{src_prefix}*' weights: is it a checkpoint of another stage?")
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = sorted(k for k in set(source) & set(target) if source[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape mismatch",
                                               [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
                                                                  for k in shapes])) if keys)
        raise UserError(f"{path} does not fit this model ({detail}); was it trained with another model preset?")
    module.load_state_dict(source, strict=False)
    return len(source)


def check_mesh_prior(module: torch.nn.Module, state: dict, path: Path) -> None:
    """A warm start must warp the way its checkpoint was trained: weights of a learned-only flow loaded under the
    mesh prior (or the reverse) would run, silently, as a model nobody trained."""
    cfg = getattr(module, "cfg", None)
    trained = (state.get("hyper_parameters") or {}).get("cfg")
    if cfg is None or not isinstance(trained, dict) or "model" not in cfg:
        return
    had = str(mesh_prior_of(trained)).lower()
    require_mesh_prior(path, trained, bool(cfg.model.warp.mesh_prior),
                       f": pass model.warp.mesh_prior={had} to continue from it, or start from a checkpoint trained "
                       "like this run")
