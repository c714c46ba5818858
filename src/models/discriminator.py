"""Single-scale PatchGAN discriminator conditioned on the driving landmark image (LSGAN)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, num_layers: int = 4, max_channels: int = 512, in_channels: int = 6):
        super().__init__()
        layers, c = [], in_channels
        for i in range(num_layers):
            out = min(max_channels, channels * 2**i)
            stride = 2 if i < num_layers - 1 else 1
            norm = nn.InstanceNorm2d(out, affine=True) if i > 0 else nn.Identity()
            layers.append(nn.Sequential(spectral_norm(nn.Conv2d(c, out, 4, stride=stride, padding=1)), norm,
                                        nn.LeakyReLU(0.2, inplace=True)))
            c = out
        self.layers = nn.ModuleList(layers)
        self.head = spectral_norm(nn.Conv2d(c, 1, 4, padding=1))

    def forward(self, image: torch.Tensor, landmark_image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(patch scores, intermediate features for feature matching)."""
        h = torch.cat([image, landmark_image], 1) * 2 - 1
        feats = []
        for layer in self.layers:
            h = layer(h)
            feats.append(h)
        return self.head(h), feats
