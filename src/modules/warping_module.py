"""WarpingModule: stage 1a, the warping generator alone.

Loss: perceptual distance between the source warped by the predicted flow and the driving frame.
Manual optimisation with one backward per step (the same pattern as the refiner and meta stages), so a
non-finite loss can be skipped on all DDP ranks together.
"""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf

from src.losses.perceptual import build_perceptual
from src.models.generator import warp_config
from src.models.warping import WarpingGenerator
from src.modules.common import NonFiniteGuard, ReconstructionMetrics


class WarpingModule(L.LightningModule):
    def __init__(self, cfg: dict, id_dim: int):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "id_dim": id_dim})  # plain containers: weights_only-loadable
        self.cfg = OmegaConf.create(cfg)
        self.automatic_optimization = False
        self.warper = WarpingGenerator(warp_config(self.cfg.model))
        # The occlusion map only matters to the refiner; the warp-only loss never reaches this head, and a
        # parameter without gradient would stall DDP's all-reduce. The refine stage trains it.
        self.warper.occlusion_head.requires_grad_(False)
        self.perceptual = build_perceptual(self.cfg.loss)
        self.guard = NonFiniteGuard(self)
        self.val_metrics = ReconstructionMetrics()

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        out = self.warper(batch["source"], batch["source_lmk_img"], batch["driving_lmk_img"], batch["source_landmarks"],
                          batch["driving_landmarks"])
        loss = self.cfg.warp.perceptual_weight * self.perceptual(out["warped"], batch["driving"])
        return loss, out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt = self.optimizers()
        loss, _ = self.model_step(batch)
        if not self.guard.ok(loss):
            return
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.warp.grad_clip_norm:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.warp.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["source"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self.model_step(batch)
        self.val_metrics.update(out["warped"], batch["source"], batch["driving"], loss=loss)
        if batch_idx == 0:
            self.last_val_images = {k: batch[k] for k in ("source", "driving", "driving_lmk_img")}
            self.last_val_images["warped"] = out["warped"].detach()

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.log_to(self)

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.warper.parameters() if p.requires_grad]
        # On the mesh prior the flow is already right where the mesh covers the face, and the residual's
        # gradients are large (the warped source's image gradients): it trains at the warp rate of the later
        # stages (optim.warp_lr_mult of optim.lr). At the full rate it drifted off the prior (demo preset: val
        # PSNR fell over 2 epochs). Learned alone, the flow starts from the identity and takes the full rate.
        lr = o.lr * (o.warp_lr_mult if self.warper.cfg.mesh_prior else 1.0)
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
