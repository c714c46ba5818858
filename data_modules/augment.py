"""Augmentations applied identically to every frame of a sample and to its landmarks.

albumentations does the photometric and affine part (keypoints follow the affine exactly); the
horizontal flip is done here because it must also swap left/right landmark indices
(FLIP_PERMUTATION), which a keypoint flip alone does not do.
"""
from __future__ import annotations

import albumentations as A
import numpy as np

from src.faces.topology import FLIP_PERMUTATION


class ClipAugment:
    def __init__(self, flip_p: float = 0.5, affine_p: float = 0.5, colour_p: float = 0.5):
        self.flip_p = flip_p
        self.transform = A.ReplayCompose(
            [
                A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-5, 5),
                         border_mode=1, p=affine_p),  # cv2.BORDER_REPLICATE
                A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=colour_p),
            ],
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        )

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """frames (N, H, W, 3) uint8 and landmarks (N, 478, 3) normalised -> the same, augmented alike."""
        n, h, w = frames.shape[:3]
        frames, landmarks = frames.copy(), landmarks.astype(np.float32).copy()
        replay = None
        for i in range(n):
            kp = landmarks[i, :, :2] * [w, h]
            if replay is None:
                out = self.transform(image=frames[i], keypoints=kp)
                replay = out["replay"]
            else:
                out = A.ReplayCompose.replay(replay, image=frames[i], keypoints=kp)
            frames[i] = out["image"]
            landmarks[i, :, :2] = np.asarray(out["keypoints"], np.float32)[:, :2] / [w, h]
        if rng.random() < self.flip_p:
            frames, landmarks = hflip(frames, landmarks)
        return frames, landmarks


def hflip(frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror frames (N, H, W, 3) and their normalised landmarks (N, 478, 3), swapping left and right."""
    flipped = landmarks[:, FLIP_PERMUTATION].copy()
    flipped[..., 0] = 1.0 - flipped[..., 0]
    return np.ascontiguousarray(frames[:, :, ::-1]), flipped
