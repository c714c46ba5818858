"""TemporalSRModule: trains TemporalSR on windows of T frames (low-resolution input -> real frames at
model.sr.scale x its size).

Losses (weights in stages/sr.yaml, after the reference): L1 (0.1), perceptual (1) and style (50) on every
valid frame of the window (frames repeated to pad a clip's end are masked out). Adam (0.9, 0.99) with a
cosine schedule over the run's steps; EMA of the weights through callbacks/ema.py. With `sr.prior` the
StyleGAN2 decoder loads published weights and stays frozen, as in the original; without it, it trains.
`sr.lq=bicubic` makes the input a bicubic downscale (1 / model.sr.scale) of the real high-resolution frames instead
of the base
model's renders. Validation: PSNR/SSIM of the output and of bicubic upsampling of the input, and the
temporal warping error (DIS optical flow) of the output, of bicubic and of the ground truth.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from src.checkpoints import load_sr_prior
from src.images import to_uint8
from src.losses.perceptual import VGGPerceptualLoss, build_perceptual
from src.losses.style import style_loss
from src.models.temporal_sr import build_sr

log = logging.getLogger(__name__)


class TemporalSRModule(L.LightningModule):
    def __init__(self, cfg: dict, total_steps: int | None = None):
        super().__init__()
        if cfg["sr"].get("prior") and cfg["model"]["sr"].get("residual"):
            # a published decoder renders whole faces, not corrections to bicubic: it cannot be a residual branch
            log.info("sr.prior is set: model.sr.residual switched off (the prior renders the whole image)")
            cfg = {**cfg, "model": {**cfg["model"], "sr": {**cfg["model"]["sr"], "residual": False}}}
        self.save_hyperparameters({"cfg": cfg, "total_steps": total_steps})
        self.cfg = OmegaConf.create(cfg)
        self.net = build_sr(self.cfg.model)
        self.ema_target = self.net
        if self.cfg.sr.prior:
            n = load_sr_prior(self.net.decoder, self.cfg.sr.prior)
            self.net.decoder.requires_grad_(False)
            log.info("SR prior: %d tensors from %s, frozen", n, self.cfg.sr.prior)
        self.perceptual = build_perceptual(self.cfg.loss)
        self.has_style = isinstance(self.perceptual, VGGPerceptualLoss)
        if not self.has_style and self.cfg.sr.style_weight:
            log.warning("no style loss: it needs VGG19 features (loss.perceptual=vgg19); training with L1 + %s only",
                        self.cfg.loss.perceptual)
        self.total_steps = total_steps
        metrics = lambda cls: torch.nn.ModuleDict({k: cls(data_range=1.0) for k in ("sr", "bicubic")})  # noqa: E731
        self.psnr, self.ssim = metrics(PeakSignalNoiseRatio), metrics(StructuralSimilarityIndexMeasure)
        # torchmetrics means: summed and counted across DDP ranks, whichever rank saw which windows
        self.warp_errors = torch.nn.ModuleDict({k: MeanMetric() for k in ("sr", "bicubic", "gt")})
        self.val_loss = MeanMetric()

    def inputs(self, batch: dict) -> torch.Tensor:
        if self.cfg.sr.lq == "bicubic":  # degrade the real high-resolution frames
            hq, size = batch["hq"], self.net.cfg.in_size
            return F.interpolate(hq.flatten(0, 1), size=(size, size), mode="bicubic", antialias=True,
                                 align_corners=False).clamp(0, 1).view(*hq.shape[:3], size, size)
        return batch["lq"]

    def model_step(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        lq = self.inputs(batch)
        out = self.net(lq)
        valid = batch["valid"].flatten()
        pred, target = out.flatten(0, 1)[valid], batch["hq"].flatten(0, 1)[valid]
        s = self.cfg.sr
        losses = {"l1": s.l1_weight * (pred - target).abs().mean(),
                  "perceptual": s.perceptual_weight * self.perceptual(pred, target)}
        if self.has_style and s.style_weight:
            losses["style"] = s.style_weight * style_loss(self.perceptual.features, pred, target)
        return sum(losses.values()), losses, out, lq

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, losses, _, _ = self.model_step(batch)
        n = batch["hq"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, sync_dist=True, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _, out, lq = self.model_step(batch)
        # not self.log(sync_dist=True): a rank whose share of a small validation split is empty would never
        # join that reduction; torchmetrics states are reduced in on_validation_epoch_end on every rank
        self.val_loss.update(loss.detach(), weight=batch["hq"].shape[0])
        valid = batch["valid"].flatten()
        bicubic = F.interpolate(lq.flatten(0, 1), scale_factor=self.net.cfg.scale, mode="bicubic",
                                align_corners=False).clamp(0, 1)
        target = batch["hq"].flatten(0, 1)
        for name, pred in (("sr", out.flatten(0, 1).clamp(0, 1)), ("bicubic", bicubic)):
            self.psnr[name].update(pred[valid], target[valid])
            self.ssim[name].update(pred[valid], target[valid])
        from src.metrics.temporal import warping_error

        t = batch["hq"].shape[1]
        for b in range(batch["hq"].shape[0]):
            keep = batch["valid"][b]
            if int(keep.sum()) < 2:
                continue
            for name, frames in (("sr", out[b]), ("bicubic", bicubic.view(-1, t, *bicubic.shape[1:])[b]),
                                 ("gt", batch["hq"][b])):
                self.warp_errors[name].update(warping_error(to_uint8(frames[keep])))
        if batch_idx == 0:
            k = min(4, t)
            self.last_val_images = {"input_bicubic": bicubic[:k], "output": out.flatten(0, 1)[:k].detach(),
                                    "target": target[:k]}
            keep = batch["valid"][0]  # the first window as a clip (callbacks/media.py writes the mp4)
            self.last_val_video = {"input_bicubic": bicubic[:t][keep], "output": out[0][keep].detach(),
                                   "target": batch["hq"][0][keep]}

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.val_loss.reset()
        for name in ("sr", "bicubic"):
            self.log(f"val/psnr{'' if name == 'sr' else '_bicubic'}", self.psnr[name].compute(), sync_dist=True)
            self.log(f"val/ssim{'' if name == 'sr' else '_bicubic'}", self.ssim[name].compute(), sync_dist=True)
            self.psnr[name].reset()
            self.ssim[name].reset()
        for name, metric in self.warp_errors.items():
            # every rank computes (the sync is a collective), even one that saw no window of >= 2 frames;
            # the value is then the same on every rank
            self.log(f"val/warp_error{'' if name == 'sr' else '_' + name}", metric.compute(), sync_dist=True)
            metric.reset()

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas))
        steps = self.total_steps or self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(steps)), eta_min=o.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
