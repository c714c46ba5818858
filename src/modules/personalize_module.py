"""PersonalizeModule: fine-tuning a trained generator (stage 1 or meta) to one person's frames.

Plain reconstruction fine-tuning (the refine stage's non-adversarial losses), no discriminator: the
adaptation budget is seconds to minutes. The per-tensor rate multipliers a meta run with `meta.learn_inner_lr`
learned (src/checkpoints.py: learned_lr_scales) are applied on top of its rate.
"""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf

from src.checkpoints import check_lr_scale
from src.losses.perceptual import build_perceptual
from src.models.generator import TalkingHeadGenerator, build_generator
from src.modules.common import ReconstructionMetrics, generator_inputs, groups_by_rate, reconstruction_losses, tensor_lr


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
