"""Landmark guidance rendered in torch, batched, on whatever device the landmarks are on.

- `LandmarkRenderer`: the RGB "landmark image": every mesh edge drawn as a thin anti-aliased line in its
  own fixed colour (lines are sampled every half pixel and splatted bilinearly).
- `gaze_heatmaps`: a Gaussian around each iris, sized by the iris.
- `region_masks`: eye and mouth masks (filled, slightly enlarged contours) for the region losses.
- `mouth_opening`: the area inside the inner lip contour (the mouth's hole in the mesh), soft at its edge.

Everything is computed from stored coordinates at training time, so augmentations, flips and
retargeted (relative) motion stay exact.
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
from mediapipe.python.solutions import face_mesh_connections as fmc
from torch import nn

from src.faces import topology as topo

EDGE_SETS = {
    # the face's structure lines: oval, brows, eyes, lips, nose, irises (~160 edges)
    "contours": fmc.FACEMESH_CONTOURS | fmc.FACEMESH_NOSE | fmc.FACEMESH_IRISES,
    # the full dense mesh (2556 edges)
    "tessellation": fmc.FACEMESH_TESSELATION | fmc.FACEMESH_IRISES,
}


def edge_colours(n: int) -> np.ndarray:
    """n distinct, fixed, saturated colours (golden-ratio hue steps)."""
    return np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.9, 1.0) for i in range(n)], np.float32)


class LandmarkRenderer(nn.Module):
    def __init__(self, edges: str = "contours", spacing: float = 0.5):
        super().__init__()
        if edges not in EDGE_SETS:
            raise ValueError(f"edges must be one of {sorted(EDGE_SETS)}")
        e = np.array(sorted(tuple(sorted(x)) for x in EDGE_SETS[edges]), dtype=np.int64)
        self.register_buffer("edges", torch.from_numpy(e), persistent=False)
        self.register_buffer("colours", torch.from_numpy(edge_colours(len(e))), persistent=False)
        self.spacing = spacing

    @torch.no_grad()
    def forward(self, landmarks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """landmarks: (B, 478, >=2) normalised to [0, 1]; returns (B, 3, H, W) in [0, 1]."""
        h, w = (size, size) if isinstance(size, int) else size
        b = landmarks.shape[0]
        xy = landmarks[..., :2].float() * landmarks.new_tensor([w, h]).float() - 0.5  # pixel centres at integers
        p0, p1 = xy[:, self.edges[:, 0]], xy[:, self.edges[:, 1]]  # (B, E, 2)
        length = (p1 - p0).norm(dim=-1)
        steps = int(torch.ceil(length.max() / self.spacing).clamp(min=1).item()) + 1
        t = torch.linspace(0, 1, steps, device=xy.device)
        pts = p0[:, :, None] + (p1 - p0)[:, :, None] * t[None, None, :, None]  # (B, E, S, 2)
        # each sample stands for `length / (steps - 1)` pixels of line
        weight = (length / (steps - 1)).clamp(max=1.0)[:, :, None].expand(-1, -1, steps)
        colour = self.colours[None, :, None, :].expand(b, -1, steps, -1)
        return _splat(pts.reshape(b, -1, 2), weight.reshape(b, -1), colour.reshape(b, -1, 3), h, w)


def _splat(pts: torch.Tensor, weight: torch.Tensor, colour: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear splat of weighted coloured points: colour = weighted mean, alpha = clamp(coverage, 0, 1)."""
    b, n, _ = pts.shape
    x0, y0 = pts[..., 0].floor(), pts[..., 1].floor()
    fx, fy = pts[..., 0] - x0, pts[..., 1] - y0
    acc = pts.new_zeros(b * h * w, 4)  # rgb * weight, weight
    batch = torch.arange(b, device=pts.device)[:, None].expand(b, n)
    for dx, dy, k in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        wk = (k * weight)[ok]
        idx = (batch[ok] * h + yi[ok]) * w + xi[ok]
        acc.index_add_(0, idx, torch.cat([colour[ok] * wk[:, None], wk[:, None]], dim=1))
    acc = acc.view(b, h, w, 4)
    cover = acc[..., 3:]
    img = acc[..., :3] / cover.clamp(min=1e-6) * cover.clamp(max=1.0)
    return img.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def gaze_heatmaps(landmarks: torch.Tensor, size: int, scale: float = 1.0) -> torch.Tensor:
    """(B, 2, H, W) Gaussians centred on the irises (subject's right, left), sigma = the iris radius."""
    h = w = size
    xy = landmarks[..., :2].float() * landmarks.new_tensor([w, h]).float()
    maps = []
    for iris in (topo.RIGHT_IRIS, topo.LEFT_IRIS):
        centre = xy[:, iris[0]]  # (B, 2)
        radius = (xy[:, iris[1:]] - centre[:, None]).norm(dim=-1).mean(dim=1).clamp(min=1.0) * scale
        ys = torch.arange(h, device=xy.device, dtype=xy.dtype) + 0.5
        xs = torch.arange(w, device=xy.device, dtype=xy.dtype) + 0.5
        d2 = (xs[None, None, :] - centre[:, 0, None, None]) ** 2 + (ys[None, :, None] - centre[:, 1, None, None]) ** 2
        maps.append(torch.exp(-d2 / (2 * radius[:, None, None] ** 2)))
    return torch.stack(maps, dim=1)


def _polygon_mask(poly: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W) even-odd fill of (B, P, 2) pixel-space polygons, tested at pixel centres."""
    ys = torch.arange(h, device=poly.device, dtype=poly.dtype) + 0.5
    xs = torch.arange(w, device=poly.device, dtype=poly.dtype) + 0.5
    px, py = xs[None, None, None, :], ys[None, None, :, None]
    a, b = poly, poly.roll(-1, dims=1)
    ax, ay = a[..., 0, None, None], a[..., 1, None, None]
    bx, by = b[..., 0, None, None], b[..., 1, None, None]
    crosses = (ay > py) != (by > py)
    x_at = (bx - ax) * (py - ay) / torch.where(by == ay, torch.full_like(by, 1e-9), by - ay) + ax
    inside = (crosses & (px < x_at)).sum(dim=1) % 2
    return inside.to(poly.dtype)


_EYE_LOOPS = [topo.ordered_loop(fmc.FACEMESH_RIGHT_EYE), topo.ordered_loop(fmc.FACEMESH_LEFT_EYE)]
_OUTER_LIPS = {61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409}
_MOUTH_LOOP = topo.ordered_loop(frozenset(e for e in fmc.FACEMESH_LIPS if e[0] in _OUTER_LIPS and e[1] in _OUTER_LIPS))


@torch.no_grad()
def region_masks(landmarks: torch.Tensor, size: int, expand: float = 1.4) -> tuple[torch.Tensor, torch.Tensor]:
    """(eye mask, mouth mask), each (B, 1, H, W) in [0, 1]: the contours enlarged by `expand` about their
    centroid, so that the region losses also cover lids and lips around the openings."""
    # Filled at a quarter of the resolution and upsampled bilinearly: cheap, and the soft edge suits a
    # loss weight.
    low = max(16, size // 4)
    xy = landmarks[..., :2].float() * low

    def fill(loop):
        poly = xy[:, loop]
        c = poly.mean(dim=1, keepdim=True)
        return _polygon_mask(c + expand * (poly - c), low, low)

    eyes = torch.clamp(fill(_EYE_LOOPS[0]) + fill(_EYE_LOOPS[1]), max=1.0)[:, None]
    mouth = fill(_MOUTH_LOOP)[:, None]
    up = lambda m: torch.nn.functional.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    return up(eyes), up(mouth)


@torch.no_grad()
def mouth_opening(landmarks: torch.Tensor, size: int, supersample: int = 4) -> torch.Tensor:
    """(B, 1, size, size) in [0, 1]: the fraction of each pixel inside the inner lip contour, filled at `supersample`
    times the size and averaged down, so that a mouth a pixel or two tall at a small flow resolution still shows."""
    big = size * supersample
    poly = landmarks[..., :2].float() * big
    inside = _polygon_mask(poly[:, topo.LIPS_INNER], big, big)[:, None]
    return torch.nn.functional.avg_pool2d(inside, supersample)
