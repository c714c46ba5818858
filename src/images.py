"""The one conversion between images (uint8 HWC numpy, RGB) and tensors (float NCHW in [0, 1])."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) float in [0, 1] (clamped) -> (N, H, W, 3) or (H, W, 3) uint8 on the CPU."""
    out = (frames.detach().float().clamp(0, 1) * 255).round().byte()
    return out.permute(*range(out.dim() - 3), -2, -1, -3).cpu().numpy()


def to_tensor(images: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, 3, H, W) or (3, H, W) float in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.permute(*range(x.dim() - 3), -1, -3, -2).float().div(255)
    return x.to(device) if device is not None else x
