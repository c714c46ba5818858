"""Pieces shared by the stage-1 LightningModules."""
from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from src.errors import UserError


def tensor_lr(name: str, base: float, warp_lr_mult: float) -> float:
    """A generator tensor's rate: the warp network's tensors at warp_lr_mult of `base` (the original's 0.1)."""
    return base * (warp_lr_mult if name.startswith("warper.") else 1.0)


def groups_by_rate(params: dict[str, torch.Tensor], lrs: dict[str, float]) -> list[dict]:
    """Optimizer parameter groups, one per distinct rate in `lrs` (by tensor name): two (refiner, warp) unless
    per-tensor rates were learned (meta.learn_inner_lr)."""
    groups: dict[float, list[torch.Tensor]] = {}
    for name, p in params.items():
        groups.setdefault(lrs[name], []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


def step_uncounted(module: L.LightningModule, opt) -> None:
    """Step a second optimizer of a manual-optimization module without counting it as a training step.

    Lightning counts every `LightningOptimizer.step()` towards `trainer.global_step` (Lightning issue #17958), so
    a module that steps two optimizers per batch (generator and discriminator; weights and learned rates) would
    stop at half of `trainer.max_steps`, checkpoint `every_n_train_steps` twice as often and size step-based
    schedules for twice the run. The module's first optimizer steps as usual and is the one counted; this one
    goes through the same strategy call (precision plugin, gradient scaler), only without the step counter."""
    module.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)


class NonFiniteGuard:
    """Skips steps whose loss is NaN/inf, on every rank at once (a rank that skipped alone would leave the
    others waiting in the gradient all-reduce), and stops the run after too many in a row."""

    def __init__(self, module: L.LightningModule, max_consecutive: int = 20):
        self.module, self.max_consecutive = module, max_consecutive
        self.skipped = self.consecutive = 0

    def ok(self, loss: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(loss.detach()).all())
        trainer = self.module._trainer
        if trainer is not None:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        self.module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)
        if self.consecutive >= self.max_consecutive:
            raise UserError(f"{self.consecutive} non-finite losses in a row at step {self.module.global_step}: "
                            f"training stopped; the last good checkpoint is kept (lower optim.lr or use fp32)")
        return False


class ReconstructionMetrics(torch.nn.Module):
    """PSNR and SSIM of the output, and of the copy-the-source baseline, against the driving frame, plus
    running means of scalars such as the validation loss.

    Everything is a torchmetrics state, reduced across DDP ranks by `log_to`, which every rank calls from
    `on_validation_epoch_end`. Logging from validation_step with sync_dist would instead need every rank to
    have logged: a rank whose share of a small streamed validation split is empty never would, and the
    others would wait for it forever."""

    def __init__(self, scalars: tuple[str, ...] = ("loss",)):
        super().__init__()
        self.psnr, self.ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
        self.psnr_copy = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim_copy = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.scalars = torch.nn.ModuleDict({k: MeanMetric() for k in scalars})

    def update(self, output: torch.Tensor, source: torch.Tensor, driving: torch.Tensor, **scalars) -> None:
        output = output.float().clamp(0, 1)
        self.psnr.update(output, driving)
        self.ssim.update(output, driving)
        self.psnr_copy.update(source, driving)
        self.ssim_copy.update(source, driving)
        self.update_scalars(len(output), **scalars)

    def update_scalars(self, weight: int, **scalars) -> None:
        for k, v in scalars.items():
            self.scalars[k].update(torch.as_tensor(v, dtype=torch.float32).detach(), weight=weight)

    def log_to(self, module: L.LightningModule, prefix: str = "val", prog_bar: tuple[str, ...] = ()) -> None:
        values = {name.replace("_copy", "_copy_source"): getattr(self, name) for name in ("psnr", "ssim", "psnr_copy",
                                                                                          "ssim_copy")}
        values.update(self.scalars)
        for name, metric in values.items():
            # compute() is the cross-rank reduction; the value is then the same on every rank
            module.log(f"{prefix}/{name}", metric.compute(), prog_bar=name in prog_bar, sync_dist=True)
            metric.reset()


def generator_inputs(batch: dict) -> dict:
    """The generator's keyword arguments from a rendered `pairs` batch."""
    return dict(source=batch["source"], source_lmk=batch["source_lmk_img"], driving_lmk=batch["driving_lmk_img"],
                identity=batch["embedding"], gaze=batch["driving_gaze"], mouth_mask=batch["driving_mouth_mask"],
                source_points=batch["source_landmarks"], driving_points=batch["driving_landmarks"])


def reconstruction_losses(weights, perceptual, out: dict, target: torch.Tensor, eye_mask: torch.Tensor,
                          mouth_mask: torch.Tensor) -> dict:
    """The generator's non-adversarial losses (weights from the `refine:` section): perceptual on the output
    and on the warped source, eye- and mouth-region L2. Shared by refine, meta and personalize."""
    from src.losses.region import region_loss

    return {
        "perceptual": weights.perceptual_weight * perceptual(out["output"], target),
        "warp_perceptual": weights.warp_perceptual_weight * perceptual(out["warped"], target),
        "eye": weights.eye_weight * region_loss(out["output"], target, eye_mask),
        "mouth": weights.mouth_weight * region_loss(out["output"], target, mouth_mask),
    }
