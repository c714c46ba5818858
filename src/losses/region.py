"""Eye- and mouth-region losses: L2 inside a (soft) mask, at several scales, normalised by the mask area."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def region_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales=(1.0, 0.5, 0.25)) -> torch.Tensor:
    loss = pred.new_zeros(())
    for s in scales:
        if s != 1:
            pred_s, target_s, mask_s = (F.interpolate(t, scale_factor=s, mode="bilinear", align_corners=False)
                                        for t in (pred, target, mask))
        else:
            pred_s, target_s, mask_s = pred, target, mask
        err = ((pred_s - target_s) ** 2 * mask_s).sum(dim=(1, 2, 3))
        area = mask_s.sum(dim=(1, 2, 3)) * pred.shape[1]
        loss = loss + (err / area.clamp(min=1.0)).mean()
    return loss / len(scales)
