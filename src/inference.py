"""Inference: the one way a trained generator (and SR model) is driven, for every pipeline.

`animate` (python -m src.animate), `evaluate`, SR's LQ renders (src/stages/sr_data.py) and the demo call these:
- `prepare_source` / `prepare_driving`: raw pictures and videos -> crops and MediaPipe landmarks, the way
  preprocessing crops training data;
- `generate`: a source driven by a sequence of landmarks, the source encoded once, frames in batches;
- `super_resolve`: frames through a temporal SR model, window by window;
- `animate`: files in, an mp4 out.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from src.errors import UserError
from src.images import to_tensor, to_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MESH_SIZE = 256   # MediaPipe runs on crops of at least this size (as preprocessing); landmarks are normalised


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; an error naming the fix when CUDA is asked for
    and missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None


@dataclass
class Source:
    crop: np.ndarray       # (R, R, 3) uint8
    landmarks: np.ndarray  # (478, 3) normalised to the crop
    embedding: np.ndarray  # identity embedding (id_dim,)
    picture: np.ndarray | None = None  # the full source image (RGB), for paste-back
    box: tuple | None = None           # (cx, cy, side) crop square in the picture
    faces_found: int = 1


@dataclass
class Driving:
    crops: list            # (R, R, 3) uint8 per frame
    landmarks: np.ndarray  # (T, 478, 3) normalised to the crops
    lost: int              # frames whose landmarks were held from the last good frame
    fps: float
    audio: tuple | None    # (samples (1, n), rate) or None
    truncated: bool        # damaged: a decoding error, or fewer frames than the container declares
    declared: int = 0      # frames the container declares (0: unknown)


def read_picture(path: Path) -> np.ndarray:
    """An RGB image, or a video's first frame."""
    from src.paths import media_kind, require_file
    from src.video_io import iter_frames

    if media_kind(require_file(path, "--source", kind="picture")) == "image":  # by content, not name
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"--source {path}: not a readable image")
        return np.ascontiguousarray(img[:, :, ::-1])
    try:
        return next(iter(iter_frames(path)))
    except (UserError, StopIteration):
        raise UserError(f"--source {path} is not a readable image or video") from None


def prepare_source(path: Path, resolution: int, embedder) -> Source:
    from src.faces.identity import clip_embedding
    from src.faces.landmarks import FaceMesh, centred_face
    from src.faces.tracking import CROP_SCALE, crop_box, crop_frame, detect_sampled

    picture = read_picture(path)
    boxes = detect_sampled([picture], 1)[0]
    if not boxes:
        raise UserError(f"--source {path}: no face found")
    if len(boxes) > 1:
        print(f"animate: {len(boxes)} faces in {path.name}; using the largest", file=sys.stderr)
    box = crop_box([boxes[0]], CROP_SCALE)
    crop = crop_frame(picture, box, resolution)
    mesh_crop = crop if resolution >= MESH_SIZE else crop_frame(picture, box, MESH_SIZE)
    with FaceMesh(static=True) as mesh:
        faces = mesh(mesh_crop)
    if not centred_face(faces):
        raise UserError(f"--source {path}: a face was detected but MediaPipe found no landmarks on it "
                        f"(too small, turned away or occluded?)")
    # the identity embedding from the sharpest crop available, as preprocessing does (512 when possible)
    id_crop = crop_frame(picture, box, 512) if box[2] >= 0.85 * 512 else mesh_crop
    embedding = clip_embedding(embedder, [id_crop], [faces[0]])
    return Source(crop, faces[0], embedding, picture, box, len(boxes))


def prepare_driving(path: Path, resolution: int) -> Driving:
    from src.faces.landmarks import FaceMesh, centred_face
    from src.faces.tracking import CROP_SCALE, crop_box, crop_frame, detect_sampled, main_track
    from src.paths import require_file
    from src.video_io import iter_frames, probe, read_audio, short_by

    info = probe(require_file(path, "--driving", kind="video"))
    frames, truncated = [], False
    try:
        for f in iter_frames(path):
            frames.append(f)
    except UserError:
        truncated = True  # keep what decoded before the damage
    if len(frames) < 2:
        raise UserError(f"--driving {path}: {len(frames)} decodable frame(s); a driving video needs at least 2")
    track, _ = main_track(detect_sampled(frames, 10))
    if not track:
        raise UserError(f"--driving {path}: no face found")
    box = crop_box(track, CROP_SCALE)
    crops, landmarks, good, lost = [], [], None, 0
    with FaceMesh(static=False, max_faces=1) as mesh:
        for frame in frames:
            crops.append(crop_frame(frame, box, resolution))
            faces = mesh(crops[-1] if resolution >= MESH_SIZE else crop_frame(frame, box, MESH_SIZE))
            if centred_face(faces):
                good = faces[0]
            else:
                lost += 1
            landmarks.append(good)  # None until the first detection
    del frames
    first = next((lm for lm in landmarks if lm is not None), None)
    if first is None:
        raise UserError(f"--driving {path}: MediaPipe found no landmarks in any frame")
    landmarks = [first if lm is None else lm for lm in landmarks]  # frames before the first detection
    truncated = truncated or short_by(len(crops), info.declared_frames)
    return Driving(crops, np.stack(landmarks).astype(np.float32), lost, info.fps, read_audio(path), truncated,
                   info.declared_frames)


def identity_embedder(backend: str, id_dim: int):
    """The identity embedder (`auto`, `insightface` or `dlib`) a checkpoint trained on `id_dim`-D embeddings needs."""
    from src.faces.identity import backend_for_dim, make_embedder

    embedder = make_embedder(backend)
    if embedder.dim != id_dim:
        raise UserError(f"the checkpoint was trained with {id_dim}-D identity embeddings but the {embedder.name} "
                        f"backend gives {embedder.dim}-D: pass --identity-backend {backend_for_dim(id_dim)}")
    return embedder


@torch.no_grad()
def generate(generator, source: Source, landmarks: np.ndarray, device, batch_size: int = 8,
             progress: bool = True, renderer=None) -> list[np.ndarray]:
    """Frames (R, R, 3) uint8 of the source driven by `landmarks` (T, 478, 3)."""
    from tqdm import tqdm

    from src.faces.render import LandmarkRenderer, gaze_heatmaps, region_masks

    r = source.crop.shape[0]
    generator = generator.to(device).eval()
    renderer = (renderer or LandmarkRenderer()).to(device)
    src = to_tensor(source.crop, device)[None]
    src_points = torch.from_numpy(np.asarray(source.landmarks, np.float32))[None].to(device)
    src_lmk = renderer(src_points, r)
    identity = torch.from_numpy(np.asarray(source.embedding, np.float32))[None].to(device)
    feats = generator.source_features(src)  # once per video
    out = []
    with tqdm(total=len(landmarks), desc="animate", unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(landmarks), batch_size):
            lm = torch.from_numpy(np.asarray(landmarks[start : start + batch_size], np.float32)).to(device)
            n = len(lm)
            frames = generator(source=src.expand(n, -1, -1, -1), source_lmk=src_lmk.expand(n, -1, -1, -1),
                               driving_lmk=renderer(lm, r), identity=identity.expand(n, -1),
                               gaze=gaze_heatmaps(lm, r), mouth_mask=region_masks(lm, r)[1],
                               source_feats=feats, source_points=src_points, driving_points=lm)["output"]
            out += list(to_uint8(frames))
            bar.update(n)
    return out


@torch.no_grad()
def super_resolve(net, frames: list[np.ndarray], window: int, device, progress: bool = True) -> list[np.ndarray]:
    """Frames through a TemporalSR model in windows of `window` (the last one padded by repeating its last frame)."""
    from tqdm import tqdm

    size = net.cfg.in_size
    bad = {f.shape[:2] for f in frames if f.shape[:2] != (size, size)}
    if bad:
        raise UserError(f"frames are {sorted(bad)[0][1]}x{sorted(bad)[0][0]} but this model takes {size}x{size} "
                        f"(it outputs {net.cfg.out_size}x{net.cfg.out_size})")
    net = net.to(device).eval()
    out = []
    for start in tqdm(range(0, len(frames), window), desc="upscale", unit="window", disable=not progress,
                      dynamic_ncols=True):
        chunk = frames[start : start + window]
        padded = chunk + [chunk[-1]] * (window - len(chunk))  # edge replication at the end
        out += list(to_uint8(net(to_tensor(np.stack(padded), device)[None])[0, : len(chunk)]))
    return out


def paste_back(picture: np.ndarray, box: tuple, face: np.ndarray, feather: float = 0.08) -> np.ndarray:
    """The generated crop blended into the picture at its crop square, with a feathered border (the crop's
    edges are the source's own background, so a soft seam is enough)."""
    cx, cy, side = box
    s = int(round(side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    face = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC if s > face.shape[0] else cv2.INTER_AREA)
    ramp = np.clip(np.minimum(np.arange(s), np.arange(s)[::-1]) / max(1.0, feather * s), 0, 1)
    alpha = np.minimum(ramp[:, None], ramp[None, :])[..., None]
    out = picture.astype(np.float32).copy()
    h, w = picture.shape[:2]
    # the part of the crop square that lies inside the picture (the crop may have been padded)
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if ax0 >= ax1 or ay0 >= ay1:
        return picture
    fx0, fy0 = ax0 - x0, ay0 - y0
    f = face[fy0 : fy0 + ay1 - ay0, fx0 : fx0 + ax1 - ax0].astype(np.float32)
    a = alpha[fy0 : fy0 + ay1 - ay0, fx0 : fx0 + ax1 - ax0]
    out[ay0:ay1, ax0:ax1] = a * f + (1 - a) * out[ay0:ay1, ax0:ax1]
    return out.round().clip(0, 255).astype(np.uint8)


def even_size(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]  # H.264 in yuv420p needs even sizes


def animate(checkpoint: Path, source: Path, driving: Path, output: Path, sr_checkpoint: Path | None = None,
            motion: str = "relative", paste: bool = False, batch_size: int = 8, device: str = "auto",
            identity_backend: str = "auto", overwrite: bool = False, progress: bool = True,
            smooth: int | None = None, motion_parts: str = "both", expression_scale: float = 1.0,
            eyes: str = "driving", lips: str = "driving", lip_scale: float = 1.0) -> dict:
    """Drive the portrait `source` (an image, or a video's first frame) with the video `driving` and write the
    mp4 `output` (with the driving clip's audio); a summary of what was done. `motion`: relative (the driver's
    motion on the source's own face) or absolute (the driver's landmarks); `paste`: blend the face back into
    the full source picture. `smooth`: a Savitzky-Golay window (odd frames) over the driving landmarks, None
    for the raw detections (src/faces/smoothing.py). `motion_parts` (both, pose, expression) and
    `expression_scale`: which of the driver's head pose and expression move the source; `eyes`, `lips`,
    `lip_scale`: whose eyes and mouth, and how strongly (src/faces/motion.py)."""
    from src.checkpoints import load_generator, load_sr
    from src.faces.motion import inter_ocular, transfer_motion
    from src.faces.smoothing import jitter, smooth_landmarks
    from src.paths import check_output, require_file
    from src.video_io import damage_warning, write_video

    output, source, driving = Path(output), Path(source), Path(driving)
    # every input and the output checked before any work (src/paths.py)
    inputs = {"--checkpoint": require_file(checkpoint, "--checkpoint"),
              "--source": require_file(source, "--source", kind="picture"),
              "--driving": require_file(driving, "--driving", kind="video"),
              "--sr-checkpoint": sr_checkpoint and require_file(sr_checkpoint, "--sr-checkpoint")}
    check_output(output, inputs, overwrite=overwrite, kind="file", suffix=".mp4")
    t0 = time.time()
    dev = resolve_device(device)
    generator, cfg, id_dim = load_generator(checkpoint)
    resolution = cfg["model"]["resolution"]
    sr = None
    if sr_checkpoint is not None:
        sr, sr_cfg = load_sr(sr_checkpoint)
        if sr.cfg.in_size != resolution:
            raise UserError(f"--sr-checkpoint {sr_checkpoint} takes {sr.cfg.in_size}px frames but the generator "
                            f"renders {resolution}px: train SR on this base model's preset")
    src = prepare_source(source, resolution, identity_embedder(identity_backend, id_dim))
    drv = prepare_driving(driving, resolution)
    if drv.lost:
        print(f"animate: the face was lost on {drv.lost} of {len(drv.crops)} driving frames; "
              f"held the last good landmarks there", file=sys.stderr)
    if drv.truncated:
        print(damage_warning("animate", driving, len(drv.crops), drv.declared), file=sys.stderr)
    driven = smooth_landmarks(drv.landmarks, smooth) if smooth else drv.landmarks
    landmarks = transfer_motion(src.landmarks, driven, motion, motion_parts, expression_scale, eyes, lips, lip_scale)
    frames = generate(generator, src, landmarks, dev, batch_size, progress=progress)
    if sr is not None:
        frames = super_resolve(sr, frames, sr_cfg["sr"]["window"], dev, progress=progress)
    if paste:
        frames = [paste_back(src.picture, src.box, f) for f in frames]
    frames = [even_size(f) for f in frames]
    audio = None, 16000
    if drv.audio is not None:
        audio = drv.audio[0].mean(0).astype(np.float32), drv.audio[1]
    write_video(output, frames, fps=drv.fps, audio=audio[0], sample_rate=audio[1])
    return {
        "output": str(output), "frames": len(frames), "fps": drv.fps, "size": list(frames[0].shape[1::-1]),
        "motion": motion, "motion_parts": motion_parts, "expression_scale": expression_scale, "eyes": eyes,
        "lips": lips, "lip_scale": lip_scale, "smooth": smooth,
        "faces_in_source": src.faces_found, "driving_frames_face_lost": drv.lost,
        "audio": drv.audio is not None, "super_resolution": sr is not None, "paste_back": paste,
        "inter_ocular": {"source": float(inter_ocular(src.landmarks)),
                         "driving_mean": float(inter_ocular(drv.landmarks).mean()),
                         "used_mean": float(inter_ocular(landmarks).mean())},
        "driving_jitter_px": {"raw": round(jitter(drv.landmarks, resolution), 4),
                              "used": round(jitter(driven, resolution), 4)},
        "seconds": round(time.time() - t0, 1),
    }
