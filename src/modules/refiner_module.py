"""RefinerModule: stage 1b, the full generator (warping generator + ID-preserving refiner) against a
PatchGAN discriminator.

Losses (weights in stages/refine.yaml, after the paper): perceptual on the output and on the warped
source, eye- and mouth-region L2, LSGAN and discriminator feature matching, and optionally a cosine identity
loss through a frozen ArcFace IResNet (src/losses/identity.py).

One backward per step updates both networks: the generator's adversarial terms see the discriminator
through detached parameters, and the discriminator's loss sees the generated frame detached, so each
loss reaches only its own network. Both updates are computed from the same state, which is what the
common "generator step, then discriminator step on the detached output" schedule does too; a single
`manual_backward` keeps DDP's gradient all-reduce to one per step.
"""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from src.losses.gan import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from src.losses.identity import build_identity_loss
from src.losses.perceptual import build_perceptual
from src.models.generator import build_discriminator, build_generator
from src.modules.common import (
    NonFiniteGuard,
    ReconstructionMetrics,
    generator_inputs,
    reconstruction_losses,
    step_uncounted,
)


class RefinerModule(L.LightningModule):
    def __init__(self, cfg: dict, id_dim: int):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "id_dim": id_dim})
        self.cfg = OmegaConf.create(cfg)
        self.automatic_optimization = False
        self.generator = build_generator(self.cfg.model, id_dim)
        self.discriminator = build_discriminator(self.cfg.model)
        self.perceptual = build_perceptual(self.cfg.loss)
        self.identity = build_identity_loss(self.cfg.loss) if self.cfg.refine.identity_weight > 0 else None
        self.guard = NonFiniteGuard(self)
        self.val_metrics = ReconstructionMetrics()

    def generator_losses(self, batch: dict, out: dict, adversarial: bool) -> dict:
        w, drv = self.cfg.refine, batch["driving"]
        losses = reconstruction_losses(w, self.perceptual, out, drv, batch["driving_eye_mask"],
                                       batch["driving_mouth_mask"])
        if self.identity is not None:
            losses["identity"] = w.identity_weight * self.identity(out["output"], drv, batch["driving_landmarks"])
        if adversarial:
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            fake_scores, fake_feats = functional_call(self.discriminator, frozen, (out["output"],
                                                                                   batch["driving_lmk_img"]))
            with torch.no_grad():
                _, real_feats = self.discriminator(drv, batch["driving_lmk_img"])
            losses["gan"] = w.gan_weight * lsgan_generator_loss(fake_scores)
            losses["feature_matching"] = w.feature_matching_weight * feature_matching_loss(real_feats, fake_feats)
        return losses

    def model_step(self, batch: dict, adversarial: bool = True) -> tuple[dict, dict]:
        out = self.generator(**generator_inputs(batch))
        return self.generator_losses(batch, out, adversarial), out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        losses, out = self.model_step(batch)
        real, _ = self.discriminator(batch["driving"], batch["driving_lmk_img"])
        fake, _ = self.discriminator(out["output"].detach(), batch["driving_lmk_img"])
        loss_d = lsgan_discriminator_loss(real, fake)
        loss_g = sum(losses.values())
        if not self.guard.ok(loss_g + loss_d):
            return
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_g + loss_d)
        clip = self.cfg.refine.grad_clip_norm
        self.clip_gradients(opt_g, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_g.step()
        step_uncounted(self, opt_d)  # one batch = one global step
        n = len(batch["source"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=n)
        self.log("train/loss", loss_g, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("train/loss_d", loss_d, sync_dist=True, batch_size=n)

    def on_train_epoch_end(self) -> None:
        for sched in self.lr_schedulers() or []:
            sched.step()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses, out = self.model_step(batch, adversarial=False)
        self.val_metrics.update(out["output"], batch["source"], batch["driving"], loss=sum(losses.values()))
        if batch_idx == 0:
            self.last_val_images = {k: batch[k] for k in ("source", "driving", "driving_lmk_img")}
            self.last_val_images.update(warped=out["warped"].detach(), output=out["output"].detach())

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.log_to(self)

    def configure_optimizers(self):
        o = self.cfg.optim
        warp = list(self.generator.warper.parameters())
        rest = list(self.generator.refiner.parameters())
        betas = tuple(o.betas)
        opt_g = torch.optim.Adam([{"params": rest, "lr": o.lr}, {"params": warp, "lr": o.lr * o.warp_lr_mult}],
                                 betas=betas, weight_decay=o.weight_decay)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=o.lr, betas=betas)
        milestones = list(self.cfg.refine.lr_decay_epochs)
        scheds = [torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1) for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], scheds
