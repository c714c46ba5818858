"""The dense-mesh warping flow: where each pixel of the driving frame comes from in the source, from the two
frames' MediaPipe landmarks alone. Torch, batched, on whatever device the landmarks are on.

    inside the face   each driving pixel maps to the source through its tessellation triangle (barycentric
                      coordinates); where triangles overlap (a turned head folds the mesh) the nearer one wins,
                      by the mean MediaPipe z of the driving triangle: the painter's order of
                      src.faces.piecewise_affine and of src.evaluate's piecewise_affine baseline
    elsewhere         the displacement continues smoothly: a harmonic (Laplace) extension of the face's
                      displacement, zero on the frame border. Hair, neck and the near background follow the
                      head and fade to still at the frame's edge; holes in the mesh (an open mouth) are filled
                      from their rim.

The flow is backward and in grid_sample's normalised units (align_corners=False), the convention of
src.models.warping: output(p) = source(p + flow(p)). Identical landmarks give an exact zero flow.
Rasterising visits only the pixels in each triangle's bounding box, so the cost follows the face's area, not
triangles x pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Candidate (triangle, pixel) pairs tested at once: bounds memory on garbage landmarks whose triangles span the frame.
_CANDIDATE_BUDGET = 2_000_000
# Landmarks are clamped to this box (normalised units, the frame is [-1, 1]) so that flows stay bounded.
_COORD_LIMIT = 3.0


class MeshFlow(nn.Module):
    """`flow, covered = MeshFlow()(source_landmarks, driving_landmarks, size)`.

    landmarks: (B, 478, 3) normalised as FaceMesh returns them (x, y in [0, 1] of the image, z like x).
    Returns the backward flow (B, 2, H, W) in normalised units and the mask (B, 1, H, W) of driving pixels
    that a mesh triangle covers (1) or that the extension filled (0). A frame with a non-finite landmark gets
    the identity flow and an empty mask."""

    def __init__(self, triangles=None, smoothing_iterations: int = 24):
        super().__init__()
        if triangles is None:
            from src.faces.topology import tessellation_triangles

            triangles = tessellation_triangles()
        self.register_buffer("triangles", torch.as_tensor(triangles, dtype=torch.long), persistent=False)
        self.iterations = smoothing_iterations

    @torch.no_grad()
    def forward(self, source: torch.Tensor, driving: torch.Tensor, size: int | tuple[int, int]):
        h, w = (size, size) if isinstance(size, int) else size
        source, driving = source.float(), driving.float()
        finite = torch.isfinite(source).flatten(1).all(1) & torch.isfinite(driving).flatten(1).all(1)
        keep = finite[:, None, None]
        # a frame with NaN/inf gets identical (zero) landmarks: no triangle has area, the flow is the identity
        source = torch.where(keep, source, torch.zeros_like(source))
        driving = torch.where(keep, driving, torch.zeros_like(driving))
        src_uv = (source[..., :2] * 2 - 1).clamp(-_COORD_LIMIT, _COORD_LIMIT)
        drv_uv = (driving[..., :2] * 2 - 1).clamp(-_COORD_LIMIT, _COORD_LIMIT)
        flow, covered = self._rasterise(src_uv, drv_uv, driving[..., 2], h, w)
        flow = harmonic_fill(flow, covered, self.iterations)
        return flow, covered

    def _rasterise(self, src_uv, drv_uv, depth, h: int, w: int):
        """Mesh displacement (B, 2, H, W) where a driving triangle covers a pixel centre (0 elsewhere) and the
        coverage mask (B, 1, H, W)."""
        b, dev = src_uv.shape[0], src_uv.device
        tris = self.triangles
        t = len(tris)
        # driving vertices in pixel units (pixel centres at integers); displacements stay in normalised units
        scale = src_uv.new_tensor([w / 2, h / 2])
        dpx = (drv_uv + 1) * scale - 0.5
        a, bb, c = (dpx[:, tris[:, k]] for k in range(3))  # (B, T, 2)
        area = _cross(bb - a, c - a)  # twice the signed area
        tri_depth = depth[:, tris].mean(-1)  # (B, T): smaller z is nearer the camera
        # the pixel centres of each triangle's bounding box that lie in the frame (none when it is outside)
        lo = torch.minimum(torch.minimum(a, bb), c).ceil().clamp(min=0)
        hi = torch.maximum(torch.maximum(a, bb), c).floor()
        hi = torch.minimum(hi, hi.new_tensor([w - 1, h - 1]))
        extent = (hi - lo + 1).clamp(min=0)
        counts = (extent[..., 0] * extent[..., 1]).long()
        counts = torch.where(area.abs() > 1e-9, counts, torch.zeros_like(counts)).flatten()  # (B*T,)
        best_depth = src_uv.new_full((b * h * w,), float("inf"))
        best_disp = src_uv.new_zeros(b * h * w, 2)
        ends = counts.cumsum(0)
        # host syncs per call: this count, the chunk bounds, and the sizes of the masked selections below
        total = int(ends[-1].item()) if len(ends) else 0
        if total == 0:
            return src_uv.new_zeros(b, 2, h, w), src_uv.new_zeros(b, 1, h, w)
        # split the (frame, triangle) list into chunks of about _CANDIDATE_BUDGET candidates
        bounds = torch.searchsorted(ends, torch.arange(_CANDIDATE_BUDGET, max(total, _CANDIDATE_BUDGET),
                                                       _CANDIDATE_BUDGET,
                                                    device=dev))
        edges = [0] + bounds.add(1).tolist() + [b * t]
        flat = lambda x: x.reshape(b * t, *x.shape[2:])
        a, bb, c, area, lo, extent, tri_depth = map(flat, (a, bb, c, area, lo, extent, tri_depth))
        # the displacement at each vertex, interpolated barycentrically: exactly 0 where the landmarks agree
        tri_disp = flat((src_uv - drv_uv)[:, tris])  # (B*T, 3, 2)
        for s, e in zip(edges[:-1], edges[1:]):
            ids = torch.repeat_interleave(torch.arange(s, e, device=dev), counts[s:e])
            if len(ids) == 0:
                continue
            start = (ends[s:e] - counts[s:e])[ids - s]
            k = torch.arange(len(ids), device=dev) + (ends[s - 1] if s > 0 else 0) - start
            wid = extent[ids, 0].long()
            px = lo[ids, 0] + (k % wid).to(lo.dtype)
            py = lo[ids, 1] + (k // wid).to(lo.dtype)
            p = torch.stack([px, py], -1)
            l0 = _cross(bb[ids] - p, c[ids] - p) / area[ids]
            l1 = _cross(c[ids] - p, a[ids] - p) / area[ids]
            l2 = 1 - l0 - l1
            tol = -1e-5  # a pixel centre on a shared edge belongs to both triangles: no cracks
            inside = (l0 >= tol) & (l1 >= tol) & (l2 >= tol)
            ids, px, py = ids[inside], px[inside], py[inside]
            lam = torch.stack([l0[inside], l1[inside], l2[inside]], -1)
            pixel = ((ids // t) * h + py.long()) * w + px.long()
            dep = tri_depth[ids]
            chunk_best = src_uv.new_full((b * h * w,), float("inf")).scatter_reduce(0, pixel, dep, "amin")
            win = dep == chunk_best[pixel]
            # several winners at equal depth: the last in triangle order, as painting in order would leave it
            order = torch.full((b * h * w,), -1, dtype=torch.long, device=dev)
            order.scatter_reduce_(0, pixel[win], ids[win], "amax")
            pick = win & (ids == order[pixel])
            pixel, dep = pixel[pick], dep[pick]
            d = (lam[pick, :, None] * tri_disp[ids[pick]]).sum(1)  # source point - driving pixel, normalised
            better = dep < best_depth[pixel]
            best_depth[pixel[better]] = dep[better]
            best_disp[pixel[better]] = d[better]
        covered = torch.isfinite(best_depth).view(b, 1, h, w).to(src_uv.dtype)
        return best_disp.view(b, h, w, 2).permute(0, 3, 1, 2).contiguous(), covered


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def harmonic_fill(values: torch.Tensor, known: torch.Tensor, iterations: int) -> torch.Tensor:
    """`values` (B, C, H, W) kept where `known` (B, 1, H, W) is 1 and filled elsewhere by the harmonic function
    with those values and 0 just outside the frame: Jacobi iterations on a coarse-to-fine pyramid (each level
    starts from the coarser solution), so a few dozen iterations per level suffice at any size."""
    h, w = values.shape[-2:]
    if min(h, w) > 4:
        hc, wc = (h + 1) // 2, (w + 1) // 2
        known_c = F.adaptive_avg_pool2d(known, (hc, wc))
        values_c = F.adaptive_avg_pool2d(values * known, (hc, wc)) / known_c.clamp(min=1e-6)
        coarse = harmonic_fill(values_c, (known_c > 0).to(values.dtype), iterations)
        x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    else:
        x = torch.zeros_like(values)
    kernel = values.new_tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]]).view(1, 1, 3, 3)
    kernel = kernel.expand(values.shape[1], 1, 3, 3)
    fixed = known > 0
    x = torch.where(fixed, values, x)
    for _ in range(iterations):
        x = torch.where(fixed, values, F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, groups=values.shape[1]))
    return x
