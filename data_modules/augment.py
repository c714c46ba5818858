"""Augmentations applied identically to every frame of a sample and to its landmarks.

albumentations does the photometric and affine part (keypoints follow the affine exactly); the
horizontal flip is done here because it must also swap left/right landmark indices
(FLIP_PERMUTATION), which a keypoint flip alone does not do. Every draw comes from the sample's own
generator, albumentations' included (its transforms otherwise draw from an unseeded generator of their own),
so a seed gives the same augmented batches in every run.
"""
from __future__ import annotations

import albumentations as A
import numpy as np

from src.faces.topology import FLIP_PERMUTATION


class ClipAugment:
    def __init__(self, flip_p: float = 0.5, affine_p: float = 0.5, colour_p: float = 0.5):
        self.flip_p, self.affine_p, self.colour_p = flip_p, affine_p, colour_p
        self._compose: dict[int, A.Compose] = {}

    def compose(self, n: int) -> A.Compose:
        """One Compose for n frames: albumentations draws the parameters once and applies them to every
        image and keypoint set named in additional_targets (cheaper than replaying per frame)."""
        if n not in self._compose:
            extra = {f"image{i}": "image" for i in range(1, n)} | {f"keypoints{i}": "keypoints" for i in range(1, n)}
            self._compose[n] = A.Compose(
                [
                    A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-5, 5),
                             border_mode=1, p=self.affine_p),  # cv2.BORDER_REPLICATE
                    A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=self.colour_p),
                ],
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                additional_targets=extra,
            )
        return self._compose[n]

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
        """frames (N, H, W, 3) uint8 and landmarks (N, 478, 3) normalised -> the same, augmented alike."""
        n, h, w = frames.shape[:3]
        landmarks = landmarks.astype(np.float32).copy()
        names = [("image", "keypoints")] + [(f"image{i}", f"keypoints{i}") for i in range(1, n)]
        inputs = {}
        for i, (im, kp) in enumerate(names):
            inputs[im], inputs[kp] = frames[i], landmarks[i, :, :2] * [w, h]
        compose = self.compose(n)
        compose.set_random_seed(int(rng.integers(2**32)))
        out = compose(**inputs)
        frames = np.stack([out[im] for im, _ in names])
        for i, (_, kp) in enumerate(names):
            landmarks[i, :, :2] = np.asarray(out[kp], np.float32)[:, :2] / [w, h]
        if rng.random() < self.flip_p:
            frames, landmarks = hflip(frames, landmarks)
        return frames, landmarks


def hflip(frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror frames (N, H, W, 3) and their normalised landmarks (N, 478, 3), swapping left and right."""
    flipped = landmarks[:, FLIP_PERMUTATION].copy()
    flipped[..., 0] = 1.0 - flipped[..., 0]
    return np.ascontiguousarray(frames[:, :, ::-1]), flipped
