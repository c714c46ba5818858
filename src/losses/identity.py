"""Identity loss: 1 - cosine similarity of face-recognition embeddings of the output and the target frame.

Both images are ArcFace-aligned (5-point similarity from the target's landmarks) by a differentiable
`grid_sample`, so the gradient reaches the generator through the crop. The recogniser is a frozen
IResNet with published arcface_torch weights (`loss.identity_weights`); there is no offline substitute:
a random network's "identity" would be noise, so a missing file is an error (src/models/iresnet.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from src.faces.align import ARCFACE_112, five_points, similarity_transform
from src.models.iresnet import IResNet


def arcface_grids(landmarks: torch.Tensor, image_hw: tuple[int, int], size: int = 112) -> torch.Tensor:
    """(B, size, size, 2) sampling grids that crop ArcFace-aligned faces from (H, W) images whose (B, N, >=2)
    landmarks are given in normalised [0, 1] coordinates: the same crop as cv2 in src/faces/align.py."""
    h, w = image_hw
    # pixel-centre coordinates as in cv2.warpAffine; grid_sample's unit square puts pixel i at (i + 0.5) / n
    crop_from_unit = np.array([[size, 0, -0.5], [0, size, -0.5], [0, 0, 1]])
    unit_from_image = np.array([[1 / w, 0, 0.5 / w], [0, 1 / h, 0.5 / h], [0, 0, 1]])
    grid_from_unit = np.array([[2, 0, -1], [0, 2, -1], [0, 0, 1]])
    unit_from_grid = np.linalg.inv(grid_from_unit)
    theta = []
    for lm in landmarks.detach().cpu().numpy():
        # the least-squares similarity image -> crop, fitted as in align.py (the fit is not symmetric, so
        # fit this direction and invert), then expressed in grid_sample's [-1, 1] coordinates
        m = similarity_transform(five_points(lm) * [w, h], ARCFACE_112 * size / 112.0)
        image_from_crop = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
        theta.append((grid_from_unit @ unit_from_image @ image_from_crop @ crop_from_unit @ unit_from_grid)[:2])
    theta = torch.as_tensor(np.stack(theta), dtype=torch.float32, device=landmarks.device)
    return F.affine_grid(theta, [len(theta), 3, size, size], align_corners=False)


class IdentityLoss:
    """Callable loss, deliberately not an nn.Module: a module holding it would save the recogniser's ~44 M
    frozen weights in every checkpoint. It follows the images to their device and stays in eval mode."""

    def __init__(self, recogniser: IResNet):
        self.net = recogniser.eval().requires_grad_(False)

    def embed(self, images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        if next(self.net.parameters()).device != images.device:
            self.net.to(images.device)
        faces = F.grid_sample(images.float(), grids, mode="bilinear", padding_mode="reflection", align_corners=False)
        return F.normalize(self.net(faces * 2 - 1), dim=1)

    def __call__(self, output: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        grids = arcface_grids(landmarks, output.shape[-2:])
        with torch.no_grad():
            ref = self.embed(target, grids)
        return (1 - (self.embed(output, grids) * ref).sum(1)).mean()


def build_identity_loss(loss_cfg) -> IdentityLoss:
    from src.checkpoints import load_face_recognition

    if not loss_cfg.identity_weights:
        from src.errors import UserError

        raise UserError("refine.identity_weight > 0 needs a face-recognition network: set loss.identity_weights "
                        "to arcface_torch's backbone.pth (e.g. ms1mv3_arcface_r50_fp16, loss.identity_arch=r50); "
                        "there is no offline substitute, so set refine.identity_weight=0 without it")
    return IdentityLoss(load_face_recognition(loss_cfg.identity_weights, loss_cfg.identity_arch))
