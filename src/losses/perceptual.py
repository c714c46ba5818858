"""Multi-scale VGG19 perceptual loss, and the documented offline substitute (L1 + MS-SSIM).

VGG19 weights load from a file in torchvision's published format (`vgg19-dcbac8cc.pth`, keys
`features.N.weight`): `loss.vgg19_weights=PATH`, or the torch hub cache where torchvision (and this
loader, when online) put it. Without the file, training refuses to start: a perceptual loss on random
VGG features would train the wrong thing silently.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError

log = logging.getLogger(__name__)
VGG19_FILE = "vgg19-dcbac8cc.pth"
VGG19_URL = "https://download.pytorch.org/models/" + VGG19_FILE
# torchvision's vgg19 `features`: conv widths, "M" = max-pool
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
_RELU_X_1 = (1, 6, 11, 20, 29)  # indices of relu1_1 ... relu5_1 in `features`
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """torchvision's vgg19().features layout, so its state-dict keys load as they are."""
    layers, c = [], 3
    for v in _CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers[: _RELU_X_1[-1] + 1])  # nothing past relu5_1 is used


def find_vgg19_weights(path: str | None, download: bool = True) -> Path:
    if path:
        if not Path(path).is_file():
            raise UserError(f"loss.vgg19_weights={path} does not exist" + (" as a file" if Path(path).exists() else ""))
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    if not cached.is_file() and download:
        try:  # what a user with internet gets automatically
            torch.hub.load_state_dict_from_url(VGG19_URL, progress=False, weights_only=True)
        except Exception as exc:  # offline, proxy, ...
            log.info("could not download %s: %s", VGG19_URL, exc)
    if not cached.is_file():
        raise UserError(
            f"VGG19 weights for the perceptual loss not found: {cached} (torchvision's {VGG19_FILE}). Put the file "
            f"there or pass loss.vgg19_weights=PATH; to train without it use the documented substitute "
            f"loss.perceptual=l1_msssim (L1 + MS-SSIM)"
        )
    return cached


def load_vgg19(path: str | Path) -> nn.Sequential:
    """VGG19 features up to relu5_1 with weights from a torchvision-format state dict (weights_only)."""
    from src.checkpoints import read_checkpoint

    state = read_checkpoint(path, what="loss.vgg19_weights")
    net = vgg19_features()
    wanted = {k for k in net.state_dict()}
    mapped = {k[len("features."):]: v for k,
              v in state.items() if isinstance(k, str) and k.startswith("features.") and k[len("features."):] in wanted}
    missing = sorted(wanted - set(mapped))
    if missing:
        names = ", ".join("features." + m for m in missing[:4])
        raise UserError(f"{path} is not a torchvision VGG19 state dict: missing {names}")
    net.load_state_dict(mapped)
    return net.eval().requires_grad_(False)


class VGGPerceptualLoss(nn.Module):
    """Sum over scales (1, 1/2, 1/4, 1/8) and layers (relu1_1 ... relu5_1) of the L1 feature distance."""

    def __init__(self, vgg: nn.Sequential, scales=(1.0, 0.5, 0.25, 0.125)):
        super().__init__()
        self.vgg, self.scales = vgg, tuple(scales)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # the VGG stays in eval mode
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = (x - self.mean) / self.std, []
        for i, layer in enumerate(self.vgg):
            h = layer(h)
            if i in _RELU_X_1:
                out.append(h)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = pred.new_zeros(())
        for s in self.scales:
            p = pred if s == 1 else F.interpolate(pred, scale_factor=s, mode="bilinear", align_corners=False,
                                                  antialias=True)
            t = target if s == 1 else F.interpolate(target, scale_factor=s, mode="bilinear", align_corners=False,
                                                    antialias=True)
            for fp, ft in zip(self.features(p), self.features(t.detach())):
                loss = loss + (fp - ft).abs().mean()
        return loss


class L1MSSSIMLoss(nn.Module):
    """The offline substitute: L1 + (1 - MS-SSIM), MS-SSIM over as many scales as the image size allows."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

        betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
        n = max(1, min(5, int(torch.log2(torch.tensor(min(pred.shape[-2:]) / 11.0)).item()) + 1))
        b = torch.tensor(betas[:n])
        # at least float32 (half and bf16 lose the SSIM statistics), but no lower than the input: a float64 check
        # of a gradient (tests/test_meta.py) needs the loss in float64 too
        dtype = torch.promote_types(pred.dtype, torch.float32)
        score = ms_ssim(pred.to(dtype), target.to(dtype), data_range=1.0, betas=tuple((b / b.sum()).tolist()),
                        normalize="relu")
        return (pred - target).abs().mean() + (1 - score)


def build_perceptual(loss_cfg) -> nn.Module:
    if loss_cfg.perceptual == "vgg19":
        return VGGPerceptualLoss(load_vgg19(find_vgg19_weights(loss_cfg.vgg19_weights)), loss_cfg.perceptual_scales)
    if loss_cfg.perceptual == "l1_msssim":
        return L1MSSSIMLoss()
    raise UserError(f"loss.perceptual must be vgg19 or l1_msssim, got '{loss_cfg.perceptual}'")
