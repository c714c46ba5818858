"""Building blocks shared by the generator networks: AdaIN, SPADE and their attention-weighted fusion."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalised(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x) in x's memory format. Instance norm returns a contiguous tensor whatever its input; mixing it with
    channels_last operands (the bf16 inference path, src.inference) sends every element-wise op after it down a
    slow strided path, which cost 15 % of the full generator's bf16 time."""
    h = norm(x)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        h = h.contiguous(memory_format=torch.channels_last)
    return h


class AdaIN(nn.Module):
    """Instance norm whose scale and shift come from a conditioning vector."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)  # starts as a plain instance norm

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(cond)[:, :, None, None].chunk(2, dim=1)
        return normalised(self.norm, x) * (1 + gamma) + beta


class SPADEParams(nn.Module):
    """Spatial scale and shift maps from a conditioning image (SPADE)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, cond: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if cond.shape[-2:] != size:
            cond = F.interpolate(cond, size=size, mode="bilinear", align_corners=False)
        h = self.shared(cond)
        return self.gamma(h), self.beta(h)


class FusedNorm(nn.Module):
    """Adaptive attentional denormalisation (face-swapping style):
    out = m * SPADE(x, warped features) + (1 - m) * AdaIN(x, identity),  m = sigmoid(conv(norm(x))).
    The mask lets the network take pose and expression from the warped source where it is reliable and
    identity from the embedding elsewhere."""

    def __init__(self, channels: int, cond_channels: int, id_dim: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.spade = SPADEParams(channels, cond_channels, hidden)
        self.id_affine = nn.Linear(id_dim, 2 * channels)
        self.mask = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        h = normalised(self.norm, x)
        gamma, beta = self.spade(cond, x.shape[-2:])
        g_id, b_id = self.id_affine(identity)[:, :, None, None].chunk(2, dim=1)
        m = torch.sigmoid(self.mask(h))
        # m * spatial + (1 - m) * global in fused element-wise ops (addcmul(a, b, c) = a + b * c, which, unlike
        # lerp, promotes mixed dtypes under autocast): at the decoder's full resolution these passes over memory
        # cost about as much as its convolutions
        spatial = torch.addcmul(beta, h, 1 + gamma)
        global_ = torch.addcmul(b_id, h, 1 + g_id)
        return torch.addcmul(global_, m, spatial - global_)


class FusedResBlock(nn.Module):
    """Residual block whose normalisations are FusedNorm."""

    def __init__(self, cin: int, cout: int, cond_channels: int, id_dim: int, hidden: int = 128):
        super().__init__()
        mid = min(cin, cout)
        self.norm0, self.conv0 = FusedNorm(cin, cond_channels, id_dim, hidden), nn.Conv2d(cin, mid, 3, padding=1)
        self.norm1, self.conv1 = FusedNorm(mid, cond_channels, id_dim, hidden), nn.Conv2d(mid, cout, 3, padding=1)
        self.skip = None
        if cin != cout:
            self.skip_norm = FusedNorm(cin, cond_channels, id_dim, hidden)
            self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.leaky_relu(self.norm0(x, cond, identity), 0.2))
        h = self.conv1(F.leaky_relu(self.norm1(h, cond, identity), 0.2))
        s = x if self.skip is None else self.skip(F.leaky_relu(self.skip_norm(x, cond, identity), 0.2))
        return s + h


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
