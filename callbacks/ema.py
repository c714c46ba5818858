"""Exponential moving average of a LightningModule's weights (SR uses decay 0.999, as the original).

The average lives beside the model, is updated after every optimiser step, replaces the live weights
during validation (so validation metrics are the EMA model's) and is saved in and restored from the
checkpoint (`callbacks` state), so a resumed run keeps its average. `module.ema_target` names the
submodule to average (the whole module when absent).
"""
from __future__ import annotations

import lightning as L
import torch


class EMA(L.Callback):
    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _target(module: L.LightningModule) -> torch.nn.Module:
        return getattr(module, "ema_target", module)

    def _params(self, module):
        return {n: p for n, p in self._target(module).named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer, module) -> None:
        if self.shadow is None:
            self.shadow = {n: p.detach().clone() for n, p in self._params(module).items()}
        else:  # restored from a checkpoint: follow the module's device
            self.shadow = {n: v.to(module.device) for n, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        for n, p in self._params(module).items():
            self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, module) -> None:
        params = self._params(module)
        if self._backup is None:
            self._backup = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(self.shadow[n])
        else:
            for n, p in params.items():
                p.copy_(self._backup[n])
            self._backup = None

    def on_validation_start(self, trainer, module) -> None:
        if self.shadow is not None and not trainer.sanity_checking:
            self._swap(module)

    def on_validation_end(self, trainer, module) -> None:
        if self._backup is not None:
            self._swap(module)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: v.cpu() for n, v in (self.shadow or {}).items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = dict(state["shadow"]) or None
