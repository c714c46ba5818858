"""The checkpoint hand-off between stages: the stage's entry in the run's `stages.json` (src/lineage.py).

The orchestrator chains stages through this record (meta starts from the latest finished refine entry,
sr from the latest meta or refine one), so it is written by the trainer itself, from rank 0 only:
`running` with the step reached after every validation (a pre-empted job shows how far it got), `done`
with the checkpoint when fitting ends normally (including a max_time or early-stopping end), and
`interrupted` on an exception. Interrupted stages resume from their `last.ckpt` when re-run.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from src.lineage import record_stage


class CheckpointHandoff(L.Callback):
    def __init__(self, record_dir: str | Path, stage: str, checkpoint: str | Path):
        self.record_dir, self.stage, self.checkpoint = Path(record_dir), stage, str(checkpoint)

    def _record(self, trainer: L.Trainer, **fields) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            record_stage(self.record_dir, self.stage, global_step=trainer.global_step, **fields)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, status="running")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, status="running", updated=time.time())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, status="done", checkpoint=self.checkpoint, finished=time.time())

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._record(trainer, status="interrupted", error=f"{type(exception).__name__}: {str(exception)[:200]}")
