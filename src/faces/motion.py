"""Motion transfer between faces on the MediaPipe mesh: which landmarks drive the generator.

`absolute`: the driving frame's own landmarks (same-identity reenactment: the driver *is* the source
person, so its face shape is the right one).

`relative` (cross-identity): only the driver's *motion* is used. A similarity transform S (rotation,
uniform scale, translation; Umeyama on the 468 mesh points) takes the driver's first frame onto the
source's landmarks; frame t then gets

    source + A (driving_t - driving_0),      A = the linear part of S (z scaled by its scale),

so at t = 0 the landmarks are exactly the source's, the source's face shape (eye distance, jaw, nose) is
kept, and head motion and expressions are the driver's, expressed in the source's frame and scale. Like
FOMM's relative mode, this assumes the driving clip starts from a pose close to the source's.

Pose and expression. The driver's motion d_t - d_0 splits exactly into its head pose and its expression:
P_t, the similarity that takes d_0 onto d_t on points that move only with the skull (RIGID), and L_t its linear
part, give

    d_t - d_0 = (P_t(d_0) - d_0)  +  L_t (P_t^-1(d_t) - d_0)
                 head pose            expression, measured in the first frame's pose, carried by the current one

Eyes and lips are the expression term of their own points: `eyes=source` drops it on the eyes (the source's
own eyes, moved with the head), `open` holds the driver's widest-open frame, `closed` lays each upper lid on
its lower one; `lips=source` drops it on the lips and the jaw below them, `lip_scale` multiplies it there.

`parts` keeps either term or both and `expression_scale` multiplies the second (0: no expression change, so
the source keeps its own, or in absolute mode the first driving frame's; 1: as driven; 2: exaggerated). With
both parts at scale 1 the sum is the motion above, exactly.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from src.errors import UserError
from src.faces.align import similarity_transform
from src.faces.topology import (
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LEFT_IRIS,
    MOUTH_CORNERS,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
    RIGHT_IRIS,
)

MODES = ("relative", "absolute")
PARTS = ("both", "pose", "expression")
MESH = slice(0, 468)  # the face mesh without the iris points (irises move with gaze, not with the head)
# forehead, nose bridge and tip, eye corners, temples and cheek sides: they move with the skull, not with the
# mouth, the jaw or the brows, so the pose fitted on them is not pulled by an expression
RIGID = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 127, 356, 234, 454]
EYES_CHOICES = ("driving", "source", "open", "closed")
LIPS_CHOICES = ("driving", "source")
UPPER_LIDS, LOWER_LIDS = RIGHT_EYE_UPPER + LEFT_EYE_UPPER, RIGHT_EYE_LOWER + LEFT_EYE_LOWER  # paired in order
EYES = sorted({*UPPER_LIDS, *LOWER_LIDS, 33, 133, 263, 362, *RIGHT_IRIS, *LEFT_IRIS})
# MediaPipe's lip contours (FACEMESH_LIPS); with them moves the jaw below the mouth corners (see lower_face)
LIPS = [0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270,
        291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415]


def transfer_motion(source: np.ndarray, driving: np.ndarray, mode: str = "relative", parts: str = "both",
                    expression_scale: float = 1.0, eyes: str = "driving", lips: str = "driving",
                    lip_scale: float = 1.0) -> np.ndarray:
    """source (478, 3) and driving (T, 478, 3) landmarks, normalised to their crops -> (T, 478, 3) float32."""
    for name, value, choices in (("motion", mode, MODES), ("motion parts", parts, PARTS),
                                 ("eyes", eyes, EYES_CHOICES), ("lips", lips, LIPS_CHOICES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{value}'")
    source = np.asarray(source, np.float64)
    widest = widest_open(driving) if eyes == "open" else 0
    out = np.empty(np.shape(driving), np.float32)
    for start, rows in _chunks(driving, widest):
        out[start : start + CHUNK] = _transfer(source, rows, mode, parts, expression_scale, eyes, lips,
                                               lip_scale)[1:-1]
    return out


def _transfer(source: np.ndarray, driving: np.ndarray, mode: str, parts: str, expression_scale: float, eyes: str,
              lips: str, lip_scale: float) -> np.ndarray:
    """transfer_motion of float64 rows: frame 0 the reference, the last the eyes' hold frame (see _chunks)."""
    delta = driving - driving[:1]
    if (parts, expression_scale, eyes, lips, lip_scale) != ("both", 1.0, "driving", "driving", 1.0):
        pose, _ = split_motion(driving)
        expression = driven_expression(driving, expression_scale if parts != "pose" else 0.0, eyes, lips, lip_scale,
                                       widest=len(driving) - 1)
        delta = (pose if parts != "expression" else 0) + expression
    if mode == "absolute":
        return _close_eyes(driving[:1] + delta) if eyes == "closed" else (driving[:1] + delta).astype(np.float32)
    s = similarity_transform(driving[0, MESH, :2], source[MESH, :2])
    linear = s[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    out = np.empty_like(driving)
    out[..., :2] = source[None, :, :2] + delta[..., :2] @ linear.T
    out[..., 2] = source[None, :, 2] + scale * delta[..., 2]
    return _close_eyes(out) if eyes == "closed" else out.astype(np.float32)


# Frames worked on at once. Every frame's motion depends only on itself, the first frame and (for eyes=open)
# the widest-open frame, so a long video is transformed in chunks: the float64 work arrays stay a few MB
# instead of growing with the video (a 5 min clip's held 300+ MB of them; issue 21's constant memory).
CHUNK = 256


def _chunks(driving: np.ndarray, hold: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) over `driving` (T, 478, 3): rows are frames start .. start + CHUNK as float64, with frame 0
    before them and frame `hold` after them, so the functions below see the frames they measure from."""
    for start in range(0, len(driving), CHUNK):
        yield start, np.concatenate([driving[:1], driving[start : start + CHUNK], driving[hold : hold + 1]]
                                    ).astype(np.float64)


def widest_open(driving: np.ndarray) -> int:
    """The frame of (T, 478, 3) landmarks whose eyes are widest open."""
    return int(np.argmax(np.concatenate([eye_opening(np.asarray(driving[s : s + CHUNK], np.float64))
                                         for s in range(0, len(driving), CHUNK)])))


def driven_expression(driving: np.ndarray, expression_scale: float = 1.0, eyes: str = "driving",
                      lips: str = "driving", lip_scale: float = 1.0, carried: bool = True, *,
                      widest: int) -> np.ndarray:
    """The driver's expression term (T, 478, 3) weighted by the controls (scale; eyes and lips: see the module's
    docstring). `carried=False`: measured in the driver's first-frame pose, not carried by its current one.
    `widest`: the frame of `driving` that `eyes=open` holds (the callers pass widest_open's, see _chunks)."""
    expression = split_motion(driving, carried=carried)[1]
    weight = np.full(driving.shape[1], float(expression_scale))
    weight[lower_face(driving[0])] *= 0.0 if lips == "source" else lip_scale
    if eyes == "source":
        weight[EYES] = 0.0
    elif eyes == "open":  # the expression of the driver's widest-open frame, carried by each frame's pose
        expression[:, EYES] = split_motion(driving, hold=widest, carried=carried)[1][:, EYES]
    return weight[None, :, None] * expression


def onto_video(source: np.ndarray, driving: np.ndarray, expression_scale: float = 1.0, eyes: str = "driving",
               lips: str = "driving", lip_scale: float = 1.0) -> np.ndarray:
    """Video-to-video: (T, 478, 3) float32 landmarks of a source *video* (Ts, 478, 3) that keeps its own head
    motion and expression and takes on the driver's expression change since its first frame, T = min(Ts, Td)
    (the shorter of the two). The driver's expression, measured in its first-frame pose, is carried into each
    source frame by the similarity from the driver's first frame onto that frame (fitted on RIGID points)."""
    n = min(len(source), len(driving))
    source, driving = source[:n], driving[:n]
    widest = widest_open(driving) if eyes == "open" else 0
    out = np.empty((n, *np.shape(source)[1:]), np.float32)
    for start, rows in _chunks(driving, widest):
        expression = driven_expression(rows, expression_scale, eyes, lips, lip_scale, carried=False,
                                       widest=len(rows) - 1)[1:-1]
        src = np.asarray(source[start : start + CHUNK], np.float64)
        moved = np.empty_like(src)
        for t in range(len(src)):
            fit = similarity_transform(rows[0, RIGID, :2], src[t, RIGID, :2])
            linear = fit[:, :2]
            moved[t, :, :2] = src[t, :, :2] + expression[t, :, :2] @ linear.T
            moved[t, :, 2] = src[t, :, 2] + float(np.sqrt(abs(np.linalg.det(linear)))) * expression[t, :, 2]
        out[start : start + CHUNK] = _close_eyes(moved) if eyes == "closed" else moved
    return out


def check_pose(landmarks: np.ndarray, what: str) -> None:
    """A UserError unless the face's head pose can be measured: the skull points (RIGID) are finite and spread
    in both directions (a pose fitted on collinear or collapsed points means nothing)."""
    rigid = np.asarray(landmarks, np.float64)[RIGID, :2]
    if not np.isfinite(rigid).all():
        raise UserError(f"{what}: its landmarks are not finite, so its head pose cannot be measured")
    spread = np.linalg.svd(rigid - rigid.mean(0), compute_uv=False) / np.sqrt(len(RIGID))
    if spread.min() < 0.1 * max(spread.max(), 1e-12) or spread.max() < 1e-3:
        raise UserError(f"{what}: its face gives no measurable head pose (the skull landmarks are collapsed or in "
                        f"a line), which --motion-parts expression needs; use --motion-parts both")


def _close_eyes(landmarks: np.ndarray, gap: float = 0.1) -> np.ndarray:
    """Each upper lid brought to `gap` of its distance above its lower lid (a shut eye, the mesh still valid)."""
    out = np.array(landmarks, np.float64)
    upper, lower = out[:, UPPER_LIDS], out[:, LOWER_LIDS]
    out[:, UPPER_LIDS] = lower + gap * (upper - lower)
    return out.astype(np.float32)


def lower_face(landmarks: np.ndarray) -> list[int]:
    """The lips and the mesh points below the mouth corners (the jaw and chin that move with the mouth)."""
    below = np.flatnonzero(landmarks[MESH, 1] > landmarks[list(MOUTH_CORNERS), 1].mean())
    return sorted({*LIPS, *below.tolist()})


def eye_opening(landmarks: np.ndarray) -> np.ndarray:
    """Mean gap between paired upper and lower lid points of both eyes over the inter-ocular distance."""
    lm = np.asarray(landmarks)
    gap = np.linalg.norm(lm[..., UPPER_LIDS, :2] - lm[..., LOWER_LIDS, :2], axis=-1).mean(-1)
    return gap / inter_ocular(lm)


def split_motion(driving: np.ndarray, hold: int | None = None, carried: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pose, expression), each (T, 478, 3), of (T, 478, 3) driving landmarks: the two terms of the module's
    docstring, which add up to driving - driving[0]. z follows the pose's scale. `hold`: every frame's
    expression is that of frame `hold` (measured in the first frame's pose), carried by each frame's own pose.
    `carried=False`: the expression left in the first frame's pose, P_t^-1(d_t) - d_0."""
    d = np.asarray(driving, np.float64)
    d0 = d[0]
    fits = [similarity_transform(d0[RIGID, :2], dt[RIGID, :2]) for dt in d]  # P_t: d_0 -> d_t
    pose, expression = np.empty_like(d), np.empty_like(d)
    for t, p in enumerate(fits):
        lin, shift = p[:, :2], p[:, 2]
        scale = float(np.sqrt(abs(np.linalg.det(lin))))
        pose[t, :, :2] = d0[:, :2] @ lin.T + shift - d0[:, :2]  # P_t(d_0) - d_0
        pose[t, :, 2] = (scale - 1.0) * d0[:, 2]
        k = t if hold is None else hold
        lin_k, shift_k = fits[k][:, :2], fits[k][:, 2]
        scale_k = float(np.sqrt(abs(np.linalg.det(lin_k))))
        neutral = (d[k, :, :2] - shift_k) @ np.linalg.inv(lin_k).T - d0[:, :2]  # P_k^-1(d_k) - d_0
        if not carried:
            scale, lin = 1.0, np.eye(2)
        expression[t, :, :2] = neutral @ lin.T                                   # carried by L_t
        expression[t, :, 2] = scale * (d[k, :, 2] / scale_k - d0[:, 2])
    return pose, expression


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Gap between the inner lips (13 upper, 14 lower) over the inter-ocular distance, of (..., 478, >=2)."""
    lm = np.asarray(landmarks)
    return np.linalg.norm(lm[..., 13, :2] - lm[..., 14, :2], axis=-1) / inter_ocular(lm)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the iris centres (468, 473) of (..., 478, >=2) landmarks."""
    lm = np.asarray(landmarks)
    return np.linalg.norm(lm[..., 468, :2] - lm[..., 473, :2], axis=-1)
