"""The warping generator: dense landmarks of source and driving -> a flow field and an occlusion map.

    9 channels (source RGB, source landmark image, driving landmark image)
      -> ladder encoder (six stride-2 convs, spectral + instance norm) -> L2-normalised code
      -> dense-motion hourglass at 1/4 resolution, every normalisation AdaIN(code)
      -> flow (pixels at 1/4 resolution, normalised, added to an identity grid) + occlusion (sigmoid)
      -> the source warped with grid_sample.

With `mesh_prior` (the default) the flow is the dense-mesh flow of the two landmark sets (src/faces/mesh_flow.py)
plus the head's output, a residual that starts at zero; the hourglass also sees that flow and the source warped
by it, and the occlusion map starts near 1 (the warped source passes through). An untrained generator then warps
exactly by the mesh, and training improves on the classical warp instead of on a still frame. Without it (the
paper's design, and checkpoints written before the prior existed) the flow head alone starts at zero: an untrained
generator warps by the identity, and the flow has to be learned from the landmark images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from src.faces.mesh_flow import MeshFlow
from src.models.blocks import AdaIN


@dataclass
class WarpConfig:
    resolution: int = 256
    code_dim: int = 512
    ladder_channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    flow_scale: float = 0.25
    mesh_prior: bool = True
    mouth_prior: bool = False


# The occlusion logit an untrained generator starts from: sigmoid(2) = 0.88 visible for the learned-only flow (the
# original's), sigmoid(5) = 0.993 over the mesh flow, which is already right where the mesh covers the face.
OCCLUSION_BIAS = {False: 2.0, True: 5.0}
# The residual on the mesh flow is predicted in tenths of a pixel: Adam moves every weight by about its rate per
# step whatever the gradient, and at the warp rate (2e-5) a full-pixel residual drifted off the prior in 40 steps
# (demo preset, held-out PSNR 25.91 at initialisation -> 25.78 dB); a tenth of it held (25.91).
RESIDUAL_SCALE = 0.1
# With the mouth prior the occlusion logit drops by this much where the driving mouth opens over source pixels that
# are not mouth interior (lips, teeth-less skin): sigmoid(5 - 10) = 0.007 visible, so the refiner paints the mouth
# there from the start, instead of getting ~1 % of the gradient through a blend that passes stretched lips through.
MOUTH_UNSEEN_LOGIT = 10.0


def prior_inputs(mesh_flow: MeshFlow, source_points: torch.Tensor, driving_points: torch.Tensor, flow_res: int,
                 mouth: bool) -> dict[str, torch.Tensor]:
    """What the mesh prior computes from the landmarks (B, 478, 3), outside any learned part (the exported graphs
    take it as inputs): `mesh_flow` (B, 2, r, r), and with `mouth` also `mouth_unseen` (B, 1, r, r), the part of
    the driving mouth opening whose mesh-warped source pixel lies outside the source's own mouth opening: there the
    warp can only stretch lips over the gap (a closed source mouth driven open)."""
    from src.faces.render import mouth_opening

    source_points = source_points.expand(len(driving_points), -1, -1)
    flow = mesh_flow(source_points, driving_points, (flow_res, flow_res))[0]
    out = {"mesh_flow": flow}
    if mouth:
        opening = lambda pts: torch.nan_to_num(mouth_opening(pts, flow_res), nan=0.0)  # noqa: E731
        seen = warp(opening(source_points), flow)
        # identical landmarks: exactly 0; a frame with a non-finite landmark (the mesh flow's identity) none
        finite = (torch.isfinite(source_points).flatten(1).all(1) & torch.isfinite(driving_points).flatten(1).all(1))
        out["mouth_unseen"] = (opening(driving_points) - seen).clamp(0, 1) * finite[:, None, None, None]
    return out


class LadderEncoder(nn.Module):
    def __init__(self, in_channels: int, channels: tuple[int, ...], code_dim: int):
        super().__init__()
        layers, c = [], in_channels
        for out in channels:
            layers += [spectral_norm(nn.Conv2d(c, out, 4, stride=2, padding=1)), nn.InstanceNorm2d(out, affine=True),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))
        return F.normalize(self.head(h), dim=1)


class _AdaINConv(nn.Module):
    """(3x3 conv -> AdaIN(code) -> LeakyReLU) x `convs`: one hourglass block."""

    def __init__(self, cin: int, cout: int, code_dim: int, convs: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(convs))
        self.norms = nn.ModuleList(AdaIN(cout, code_dim) for _ in range(convs))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.leaky_relu(norm(conv(x), code), 0.2)
        return x


class DenseMotionHourglass(nn.Module):
    """U-Net hourglass: `num_blocks` down blocks doubling the features (capped at max_features), the
    mirrored up blocks with skip connections; every normalisation is AdaIN on the code."""

    def __init__(self, in_channels: int, block_expansion: int, max_features: int, num_blocks: int, code_dim: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, block_expansion, 3, padding=1)
        ch = [block_expansion] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down = nn.ModuleList(_AdaINConv(ch[i], ch[i + 1], code_dim) for i in range(num_blocks))
        # up blocks: one conv each (the skip already carries the detail), which also lands the full
        # preset near the original's 75 M dense-motion parameters
        self.up = nn.ModuleList(_AdaINConv(ch[i + 1] + ch[i], ch[i], code_dim, convs=1)
                                for i in reversed(range(num_blocks)))
        self.out_channels = block_expansion

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = F.avg_pool2d(block(h, code), 2)
            skips.append(h)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1), code)
        return h


def identity_grid(b: int, h: int, w: int, device, dtype) -> torch.Tensor:
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device, dtype=dtype).expand(b, 2, 3)
    return F.affine_grid(theta, [b, 1, h, w], align_corners=False)


def grid_from_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid (B, H, W, 2) at `size` for a flow (B, 2, h, w) in normalised units. The flow is
    resized and added to an identity grid made at `size` (resizing an absolute grid would shift the
    borders), so a zero flow is an exact identity warp at every resolution."""
    if flow.shape[-2:] != tuple(size):
        flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    b = flow.shape[0]
    return identity_grid(b, size[0], size[1], flow.device, flow.dtype) + flow.permute(0, 2, 3, 1)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp image with a flow in normalised units (any resolution)."""
    grid = grid_from_flow(flow, tuple(image.shape[-2:]))
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


class WarpingGenerator(nn.Module):
    def __init__(self, cfg: WarpConfig):
        super().__init__()
        self.cfg = cfg
        self.flow_res = int(round(cfg.resolution * cfg.flow_scale))
        if self.flow_res / 2 ** cfg.num_blocks < 1:
            raise ValueError(f"model.warp.num_blocks={cfg.num_blocks} halves the {self.flow_res}px flow map below "
                             f"1 px; use at most {int(math.log2(self.flow_res))}")
        if cfg.resolution / 2 ** len(cfg.ladder_channels) < 2:
            raise ValueError(f"{len(cfg.ladder_channels)} ladder convs shrink {cfg.resolution}px below 2 px; "
                             f"use at most {int(math.log2(cfg.resolution)) - 1} entries in model.warp.ladder_channels")
        self.encoder = LadderEncoder(9, tuple(cfg.ladder_channels), cfg.code_dim)
        # with the prior the hourglass also sees the mesh flow (2) and the source warped by it (3)
        self.mesh_flow = MeshFlow() if cfg.mesh_prior else None
        self.hourglass = DenseMotionHourglass(9 + 5 * cfg.mesh_prior, cfg.block_expansion, cfg.max_features,
                                              cfg.num_blocks, cfg.code_dim)
        self.flow_head = nn.Conv2d(self.hourglass.out_channels, 2, 7, padding=3)
        self.occlusion_head = nn.Conv2d(self.hourglass.out_channels, 1, 7, padding=3)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)  # the mesh flow (or the identity) at initialisation
        nn.init.constant_(self.occlusion_head.bias, OCCLUSION_BIAS[cfg.mesh_prior])

    def forward(self, source: torch.Tensor, source_lmk: torch.Tensor, driving_lmk: torch.Tensor,
                source_points: torch.Tensor | None = None, driving_points: torch.Tensor | None = None,
                mesh_flow: torch.Tensor | None = None, mouth_unseen: torch.Tensor | None = None) -> dict:
        """Images (B, 3, R, R) in [0, 1]; `*_points` the landmarks (B, 478, 3), normalised as FaceMesh gives them,
        which the mesh prior needs (a source batch of one is broadcast), or `mesh_flow` (and, with the mouth
        prior, `mouth_unseen`): self.prior of them computed beforehand (the exported graphs take them as inputs:
        src/runtime.py). Returns the warped source, the flow (B, 2, r, r) in normalised units at flow resolution
        r = R * flow_scale, the occlusion map (B, 1, R, R), the motion code and, with the prior, the mesh flow alone
        (`mesh_flow`) and `mouth_unseen`."""
        x = torch.cat([source, source_lmk, driving_lmk], 1) * 2 - 1
        code = self.encoder(x)
        size = (self.flow_res, self.flow_res)
        small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        prior = None
        if self.mesh_flow is not None:
            if mesh_flow is None:
                computed = self.prior(source_points, driving_points)
                mesh_flow, mouth_unseen = computed["mesh_flow"], computed.get("mouth_unseen")
            elif self.cfg.mouth_prior and mouth_unseen is None:
                raise ValueError("this generator has the mouth prior (model.warp.mouth_prior): pass mouth_unseen "
                                 "with mesh_flow, as self.prior returns them")
            prior = mesh_flow.to(x.dtype)
            small_src = F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=True)
            small = torch.cat([small, prior * (self.flow_res / 8), warp(small_src, prior) * 2 - 1], 1)
        h = self.hourglass(small, code)
        flow = self.flow_head(h) * (2.0 / self.flow_res)  # pixels at flow resolution -> [-1, 1] units
        if prior is not None:
            flow = flow * RESIDUAL_SCALE + prior
        logit = self.occlusion_head(h)
        if self.cfg.mouth_prior:
            logit = logit - MOUTH_UNSEEN_LOGIT * mouth_unseen.to(x.dtype)
        occlusion = torch.sigmoid(F.interpolate(logit, size=source.shape[-2:], mode="bilinear", align_corners=False))
        out = {"warped": warp(source, flow), "flow": flow, "occlusion": occlusion, "code": code}
        if prior is not None:
            out["mesh_flow"] = prior
        if self.cfg.mouth_prior:
            out["mouth_unseen"] = mouth_unseen
        return out

    def prior(self, source_points: torch.Tensor | None, driving_points: torch.Tensor | None) -> dict:
        """The prior's inputs from source to driving landmarks (B, 478, 3) at flow resolution (`prior_inputs`):
        keyword arguments of forward."""
        if source_points is None or driving_points is None:
            raise ValueError("this generator warps on the mesh prior (model.warp.mesh_prior): pass "
                             "source_points and driving_points, the (B, 478, 3) landmarks")
        with torch.autocast(driving_points.device.type, enabled=False):  # geometry in fp32 under mixed precision
            return prior_inputs(self.mesh_flow, source_points.float(), driving_points.float(), self.flow_res,
                                self.cfg.mouth_prior)
