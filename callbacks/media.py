"""Validation media: an image grid every validation, and a short mp4 when the module provides frames over
time, written to the run folder and sent to every attached logger that can show them.

A module opts in by setting, during validation (first batch is enough):
    last_val_images = {"column name": (N, 3, H, W) tensor in [0, 1], ...}   -> grid, rows = samples
    last_val_video  = {"column name": (T, 3, H, W) tensor in [0, 1], ...}   -> mp4, columns side by side

Where the files go: `<run>/media/val_step<step>.png|.mp4` always (the CSV logger's companion: a plain
folder anyone can open); wandb: `val/grid` image and `val/video`; TensorBoard: `val/grid` image (its video
support needs moviepy, so the video's first, middle and last frames go as `val/video_frames`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch

from src.images import to_uint8


def _columns(images: dict[str, torch.Tensor], rows: int) -> list[torch.Tensor]:
    return [images[k][:rows].detach().float().clamp(0, 1).cpu() for k in images]


def grid(images: dict[str, torch.Tensor], max_rows: int = 4) -> np.ndarray:
    """(H * rows, W * columns, 3) uint8 with one column per entry."""
    cols = _columns(images, max_rows)
    rows = [torch.cat([c[i] for c in cols], dim=2) for i in range(min(c.shape[0] for c in cols))]
    return to_uint8(torch.cat(rows, dim=1))


def video_frames(video: dict[str, torch.Tensor]) -> list[np.ndarray]:
    cols = _columns(video, 10**6)
    frames = torch.cat(cols, dim=3)  # (T, 3, H, W * columns)
    out = to_uint8(frames)
    return [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in out]  # even sizes for H.264


class MediaLogger(L.Callback):
    def __init__(self, out_dir: str | Path, max_rows: int = 4, fps: float = 8.0):
        self.out_dir, self.max_rows, self.fps = Path(out_dir), max_rows, fps

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        images = getattr(pl_module, "last_val_images", None)
        video = getattr(pl_module, "last_val_video", None)
        step = trainer.global_step
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if images:
            g = grid(images, self.max_rows)
            cv2.imwrite(str(self.out_dir / f"val_step{step:07d}.png"), g[:, :, ::-1])
            self._send_image(trainer, "val/grid", g, step, " | ".join(images))
        if video:
            from src.video_io import write_video

            frames = video_frames(video)
            path = write_video(self.out_dir / f"val_step{step:07d}.mp4", frames, fps=self.fps)
            self._send_video(trainer, path, frames, step, " | ".join(video))

    @staticmethod
    def _send_image(trainer: L.Trainer, key: str, image: np.ndarray, step: int, caption: str) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key, [image], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, image, step, dataformats="HWC")

    @staticmethod
    def _send_video(trainer: L.Trainer, path: Path, frames: list[np.ndarray], step: int, caption: str) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({"val/video": wandb.Video(str(path), caption=caption, format="mp4"),
                                       "trainer/global_step": step})
            elif isinstance(logger, TensorBoardLogger):
                picks = np.stack([frames[0], frames[len(frames) // 2], frames[-1]])
                logger.experiment.add_images("val/video_frames", picks, step, dataformats="NHWC")
