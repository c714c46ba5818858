"""Validation image grids: source, driving, driving landmarks, warped, output (rows = samples), saved as
PNG in the run folder and sent to wandb when a WandbLogger is attached."""
from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger


class ValidationImageGrid(L.Callback):
    def __init__(self, out_dir: str | Path, max_rows: int = 4):
        self.out_dir, self.max_rows = Path(out_dir), max_rows

    @staticmethod
    def grid(images: dict[str, torch.Tensor], max_rows: int) -> np.ndarray:
        cols = [images[k][:max_rows].float().clamp(0, 1).cpu() for k in images]
        rows = [torch.cat([c[i] for c in cols], dim=2) for i in range(cols[0].shape[0])]
        return (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images = getattr(pl_module, "last_val_images", None)
        if not images or not trainer.is_global_zero or trainer.sanity_checking:
            return
        grid = self.grid(images, self.max_rows)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"val_step{trainer.global_step:07d}.png"
        cv2.imwrite(str(path), grid[:, :, ::-1])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/grid", [grid], step=trainer.global_step, caption=[" | ".join(images)])
