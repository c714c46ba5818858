"""Following the main face through a clip and cropping one stable square around the head."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from src.faces.detect import Box, detect_faces

# head crop side / face box side: what the models are trained on (preprocessing) and run on (inference)
CROP_SCALE = 1.8

def _iou(a, b) -> float:
    ix = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    iy = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    inter = ix * iy
    return inter / (a.area + b.area - inter + 1e-9)


def detect_sampled(frames: list[np.ndarray], every: int) -> dict[int, list]:
    """Face boxes on every `every`-th frame (and the last) of a list of frames (see detect_in_stream)."""
    return detect_in_stream(lambda: iter(frames), every)[0]


def detect_in_stream(open_frames: Callable[[], Iterable[np.ndarray]], every: int) -> tuple[dict[int, list], int]:
    """(face boxes on every `every`-th frame and the last, number of frames) of the frames `open_frames()`
    yields, holding one frame at a time. Frames are shrunk to <= 640 px for speed; when that finds nothing
    anywhere, the sampled frames are read again (a second `open_frames()`) and searched upsampled, for small
    faces."""
    found, last, count = {}, None, 0
    for i, frame in enumerate(open_frames()):
        if i % every == 0:
            found[i] = _detect_shrunk(frame)
        last, count = frame, i + 1
    if last is not None and count - 1 not in found:
        found[count - 1] = _detect_shrunk(last)
    del last
    if found and not any(found.values()):
        found = {i: detect_faces(frame, upsample=1) for i, frame in enumerate(open_frames()) if i in found}
    return found, count


def _detect_shrunk(frame: np.ndarray) -> list:
    h, w = frame.shape[:2]
    scale = min(1.0, 640.0 / max(h, w))
    if scale == 1.0:
        return detect_faces(frame, upsample=0)
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return [Box(b.left / scale, b.top / scale, b.right / scale, b.bottom / scale, b.score)
            for b in detect_faces(small, upsample=0)]


def main_track(detections: dict[int, list]) -> tuple[list, int]:
    """Greedy IoU tracking over the sampled frames; returns (boxes of the main track, number of faces seen
    at once at most). The main track is the one with the largest total area: big and consistently there."""
    tracks: list[list] = []
    for i in sorted(detections):
        extended: set[int] = set()  # a track takes at most one box per frame
        for box in detections[i]:
            free = [k for k in range(len(tracks)) if k not in extended]
            best = max(free, key=lambda k: _iou(tracks[k][-1], box), default=None)
            if best is not None and _iou(tracks[best][-1], box) > 0.3:
                tracks[best].append(box)
                extended.add(best)
            else:
                tracks.append([box])
                extended.add(len(tracks) - 1)
    most = max((len(v) for v in detections.values()), default=0)
    if not tracks:
        return [], most
    return max(tracks, key=lambda t: sum(b.area for b in t)), most


def crop_box(track: list, crop_scale: float) -> tuple[float, float, float]:
    """One square (cx, cy, side) for the whole clip: the union of the per-sample head boxes."""
    sizes = np.array([max(b.width, b.height) for b in track])
    cx = np.array([b.center[0] for b in track])
    cy = np.array([b.center[1] for b in track]) - 0.15 * sizes  # the head extends above the face box
    half = sizes * crop_scale / 2
    x0, x1 = (cx - half).min(), (cx + half).max()
    y0, y1 = (cy - half).min(), (cy + half).max()
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)


def crop_frame(frame: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    cx, cy, side = box
    s = int(round(side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = frame.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    crop = frame[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)
