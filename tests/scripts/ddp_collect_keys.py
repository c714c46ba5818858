"""Run by tests/test_ddp_data.py: one epoch of 2-process CPU DDP (gloo) that records, per rank, which
samples the VoxCeleb2DataModule delivered.  Usage: ddp_collect_keys.py SHARDS OUT MODE NUM_WORKERS"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from data_modules.voxceleb2 import VoxCeleb2DataModule


class Recorder(L.LightningModule):
    def __init__(self, out: str, field: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out, self.field, self.seen = out, field, []

    def training_step(self, batch, _):
        self.seen += batch[self.field]
        return (self.weight * batch["source"].mean()).sum()

    def on_train_epoch_end(self):
        Path(self.out, f"rank{self.global_rank}.json").write_text(
            json.dumps({"seen": self.seen, "world_size": self.trainer.world_size}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    shards, out, mode, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dm = VoxCeleb2DataModule(shards, mode=mode, resolution=32, batch_size=1, num_workers=workers,
                             samples_per_clip=1, augment=False, render=False, support=1, query=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(Recorder(out, "key" if mode == "pairs" else "identity"), datamodule=dm)
    from src.trainer import close_distributed

    close_distributed()  # as src.train does: gloo's group torn down before exit
