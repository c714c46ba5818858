"""LSGAN objectives and discriminator feature matching."""
from __future__ import annotations

import torch


def lsgan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean())


def lsgan_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    return ((fake - 1) ** 2).mean()


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 between discriminator features of real and generated frames, per layer, summed."""
    loss = fake_feats[0].new_zeros(())
    for r, f in zip(real_feats, fake_feats):
        loss = loss + (f - r.detach()).abs().mean()
    return loss
