"""A minimal LightningModule for testing the training plumbing (configs, loggers, run folders)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from src.trainer import build_trainer


class TinyRegression(L.LightningModule):
    """Fits y = 3x - 1 with one linear layer; logs train/loss and val/loss."""

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.lr = lr

    def model_step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, _):
        loss = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.model_step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def regression_loader(n: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, 3 * x - 1), batch_size=8)


def run_tiny(cfg, run_dir: Path) -> None:
    """A stage runner for tests: the real Trainer wiring around TinyRegression."""
    trainer = build_trainer(cfg, run_dir, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyRegression(lr=cfg.optim.lr), regression_loader(), regression_loader(16, seed=1))
