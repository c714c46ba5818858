"""Paste-back: a generated face crop blended into the full picture it was cut from.

The blend follows the face, not the crop square: its mask is the MediaPipe face oval of the source and of the
generated face (their union, so the source's face is replaced wherever the driven one moved away from it),
grown a little towards the hair and chin and feathered. Every pixel outside the feathered mask is the
picture's own, bit for bit. Before blending, the generated face's colours are matched to the picture's face
(mean and spread per channel in Lab, inside the mask, measured once per video), so a generator's colour
drift leaves no seam.
"""
from __future__ import annotations

import cv2
import numpy as np

from src.faces.topology import face_oval

GROW = 1.12      # the oval scaled about its centre: the forehead's edge, the ears' roots, under the chin
FEATHER = 0.06   # blur radius of the mask's edge, as a fraction of the crop side


def face_mask(landmarks: list[np.ndarray], size: int, grow: float = GROW, feather: float = FEATHER) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the union of the face ovals of crop-normalised (478, >=2) landmarks,
    each grown by `grow` about its centre, feathered over `feather` x size (zero beyond the feathered edge)."""
    oval = face_oval()
    hard = np.zeros((size, size), np.uint8)
    for lm in landmarks:
        pts = np.asarray(lm)[oval, :2] * size
        pts = (pts - pts.mean(0)) * grow + pts.mean(0)
        cv2.fillPoly(hard, [np.round(pts).astype(np.int32)], 255)
    radius = max(1, int(round(feather * size)))
    # erode then blur by the same radius: the soft edge lies around the grown oval, and is exactly 0 beyond it
    hard = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (2 * radius + 1, 2 * radius + 1), radius / 2.5)
    return np.clip(soft, 0.0, 1.0)


def colour_map(face: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple | None:
    """The per-channel Lab map (face mean, gain, reference mean) that gives `face` (RGB uint8) the mean and
    spread of `reference` inside `mask` (> 0.5). The gain is held within [0.8, 1.25]. Measure it once per
    video, on a frame whose expression is the source's, so an opened mouth does not repaint the face and
    the correction does not flicker. None when the mask is (nearly) empty."""
    inside = mask > 0.5
    if inside.sum() < 16:
        return None
    f = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)[inside]
    r = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)[inside]
    return f.mean(0), np.clip((r.std(0) + 1e-3) / (f.std(0) + 1e-3), 0.8, 1.25), r.mean(0)


def apply_colour_map(face: np.ndarray, cmap: tuple | None) -> np.ndarray:
    if cmap is None:
        return face
    face_mean, gain, reference_mean = cmap
    lab = (cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32) - face_mean) * gain + reference_mean
    return cv2.cvtColor(lab.round().clip(0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def paste_back(picture: np.ndarray, box: tuple, face: np.ndarray, mask: np.ndarray,
               colours: tuple | None = None) -> np.ndarray:
    """The picture with the generated crop `face` (of the crop square `box` = (cx, cy, side)) blended in under
    `mask` (face_mask at the face's size), its colours first mapped by `colours` (colour_map; None: as
    generated). Pixels where the mask is 0 are returned unchanged."""
    cx, cy, side = box
    s = int(round(side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    face = apply_colour_map(face, colours)
    up = cv2.INTER_CUBIC if s > face.shape[0] else cv2.INTER_AREA
    face = cv2.resize(face, (s, s), interpolation=up)
    alpha = cv2.resize(mask, (s, s), interpolation=cv2.INTER_LINEAR)[..., None]
    h, w = picture.shape[:2]
    # the part of the crop square that lies inside the picture (the crop may have been padded)
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if ax0 >= ax1 or ay0 >= ay1:
        return picture
    fx0, fy0 = ax0 - x0, ay0 - y0
    window = (slice(ay0, ay1), slice(ax0, ax1))
    f = face[fy0 : fy0 + ay1 - ay0, fx0 : fx0 + ax1 - ax0].astype(np.float32)
    a = alpha[fy0 : fy0 + ay1 - ay0, fx0 : fx0 + ax1 - ax0]
    out = picture.copy()
    blended = (a * f + (1 - a) * picture[window].astype(np.float32)).round().clip(0, 255).astype(np.uint8)
    out[window] = np.where(a > 0, blended, picture[window])
    return out
