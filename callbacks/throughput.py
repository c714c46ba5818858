"""Throughput: training samples/s (all ranks), seconds per step and peak GPU memory, logged as `perf/*`
every `log_every_n_steps` steps.

A "sample" is one item of the batch: a frame pair (warp, refine), a task (meta), a window (sr). The time
is wall time between consecutive batch ends, so data loading counts: this is what a run really gets.
"""
from __future__ import annotations

import time

import lightning as L
import torch


def batch_items(batch) -> int:
    if torch.is_tensor(batch):
        return len(batch)
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return next((batch_items(v) for v in batch if torch.is_tensor(v) or isinstance(v, (dict, list, tuple))), 0)
    return 0


class ThroughputMonitor(L.Callback):
    def __init__(self, log_every_n_steps: int | None = None):
        self.every = log_every_n_steps
        self._samples = 0
        self._steps = 0
        self._window_start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_start, self._samples, self._steps = time.perf_counter(), 0, 0  # skip the epoch gap
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        self._samples += batch_items(batch) * trainer.world_size
        self._steps += 1
        every = self.every or trainer.log_every_n_steps or 50
        if self._steps < every:
            return
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        metrics = {"perf/samples_per_s": self._samples / elapsed, "perf/step_s": elapsed / self._steps}
        if pl_module.device.type == "cuda":
            metrics["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        # straight to the loggers, once, from rank 0 (ranks are in lock-step under DDP); self.log from a
        # callback would keep re-emitting the last value on the steps in between
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._window_start, self._samples, self._steps = time.perf_counter(), 0, 0
