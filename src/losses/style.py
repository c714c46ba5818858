"""Style loss: L1 distance of Gram matrices of VGG19 features (relu1_1 ... relu5_1), as in GFPGAN and the
original's super-resolution training. It needs real VGG19 features: with the offline L1 + MS-SSIM
substitute there is no style loss (src/modules/sr_module.py says so when it starts)."""
from __future__ import annotations

import torch


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def style_loss(features, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`features(x)` -> list of feature maps (VGGPerceptualLoss.features)."""
    with torch.no_grad():
        ref = [gram(f) for f in features(target)]
    return sum((gram(f) - g).abs().mean() for f, g in zip(features(pred), ref))
