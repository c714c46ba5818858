"""Run by tests/test_ddp_data.py: 2-process CPU DDP (gloo) over meta-learning episodes that records, per rank and
epoch, which person's episode came in which step and from which frames; it checkpoints after every step, so a
run stopped after an epoch can be resumed from that epoch's last step.
Usage: ddp_episode_order.py SHARDS OUT MAX_EPOCHS [RESUME_CKPT]"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from data_modules.voxceleb2 import VoxCeleb2DataModule


class Recorder(L.LightningModule):
    def __init__(self, out: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out, self.epochs = out, {}

    def training_step(self, batch, _):
        # keyed by the data's epoch: resumed at an epoch's last step, Lightning skips on_train_epoch_start
        epoch = self.trainer.datamodule.train_epochs_started - 1
        self.epochs.setdefault(epoch, []).extend([ident, batch["support_index"][i].tolist()]
                                                 for i, ident in enumerate(batch["identity"]))
        return (self.weight * batch["source"].mean()).sum()

    def on_train_end(self):
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.epochs))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    shards, out, max_epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    dm = VoxCeleb2DataModule(shards, mode="episodes", resolution=32, batch_size=1, num_workers=0, augment=False,
                             render=False, support=2, query=1, cross_clip=False, seed=7)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=max_epochs, logger=False,
                        callbacks=[ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=1, save_top_k=0)],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Recorder(out), datamodule=dm, ckpt_path=resume, weights_only=True)
    from src.trainer import close_distributed

    close_distributed()  # as src.train does: gloo's group torn down before exit
