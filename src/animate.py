"""Animate a portrait with a driving video: one-shot (any generator checkpoint) or personalized.

    python -m src.animate --checkpoint CKPT --source IMAGE_OR_VIDEO --driving VIDEO --output OUT.mp4
                          [--sr-checkpoint SR.ckpt] [--motion relative|absolute] [--paste-back]
                          [--batch-size N] [--device auto|cpu|cuda]

From raw files, with the preprocessing code: the source (an image, or a video's first frame) and every
driving frame are face-detected and cropped like the training data, MediaPipe gives their landmarks, and
the identity embedding of the source is computed with the backend the checkpoint was trained with. The
source's encoding (crop, landmark image, identity, refiner feature pyramid) is computed once; the driving
frames go through the generator in batches, then optionally through a temporal SR model (to 512), and are
written with the driving clip's audio.

--motion relative (default; for another person's video): the driver's head motion and expressions,
measured from its first frame, move the source's own landmarks, so the source keeps its face shape.
--motion absolute: the driver's landmarks as they are (same-person reenactment).
--paste-back: the generated face is blended back into the full source picture.

If several faces are in the source, the largest is used (and said). Driving frames where the face is lost
keep the last good landmarks (the count is reported). The mp4 appears under its final name only when
complete; an existing OUT is kept unless --overwrite.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from src.errors import UserError, cli_entry

log = logging.getLogger(__name__)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
CROP_SCALE = 1.8  # as preprocessing (src.preprocess.Options.crop_scale): the model saw crops of this scale
MESH_SIZE = 256   # MediaPipe runs on crops of at least this size (as preprocessing); landmarks are normalised


@dataclass
class Source:
    picture: np.ndarray    # the full source image (RGB)
    box: tuple             # (cx, cy, side) crop square in the picture
    crop: np.ndarray       # (R, R, 3) uint8
    landmarks: np.ndarray  # (478, 3) normalised to the crop
    embedding: np.ndarray  # identity embedding (id_dim,)
    faces_found: int


@dataclass
class Driving:
    crops: list            # (R, R, 3) uint8 per frame
    landmarks: np.ndarray  # (T, 478, 3) normalised to the crops
    lost: int              # frames whose landmarks were held from the last good frame
    fps: float
    audio: tuple | None    # (samples (1, n), rate) or None
    truncated: bool


def _mesh_ok(faces: list) -> bool:
    # the crop is centred on the tracked face: a mesh far from the centre is someone else
    return bool(faces) and float(np.abs(faces[0][:468, :2].mean(0) - 0.5).max()) < 0.25


def read_picture(path: Path) -> np.ndarray:
    from src.video_io import iter_frames

    if not path.is_file():
        raise UserError(f"--source {path} does not exist")
    if path.suffix.lower() in IMAGE_EXTS:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"--source {path}: not a readable image")
        return np.ascontiguousarray(img[:, :, ::-1])
    try:
        return next(iter(iter_frames(path)))
    except (UserError, StopIteration):
        raise UserError(f"--source {path}: not a readable image or video") from None


def prepare_source(path: Path, resolution: int, embedder) -> Source:
    from src.faces.identity import clip_embedding
    from src.faces.landmarks import FaceMesh
    from src.faces.tracking import crop_box, crop_frame, detect_sampled

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
    if not _mesh_ok(faces):
        raise UserError(f"--source {path}: a face was detected but MediaPipe found no landmarks on it "
                        f"(too small, turned away or occluded?)")
    # the identity embedding from the sharpest crop available, as preprocessing does (512 when possible)
    id_crop = crop_frame(picture, box, 512) if box[2] >= 0.85 * 512 else mesh_crop
    embedding = clip_embedding(embedder, [id_crop], [faces[0]])
    return Source(picture, box, crop, faces[0], embedding, len(boxes))


def prepare_driving(path: Path, resolution: int) -> Driving:
    from src.faces.landmarks import FaceMesh
    from src.faces.tracking import crop_box, crop_frame, detect_sampled, main_track
    from src.video_io import iter_frames, probe, read_audio

    if not path.is_file():
        raise UserError(f"--driving {path} does not exist")
    info = probe(path)  # raises a UserError for a file that is not a video
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
            if _mesh_ok(faces):
                good = faces[0]
            else:
                lost += 1
            landmarks.append(good)  # None until the first detection
    del frames
    first = next((lm for lm in landmarks if lm is not None), None)
    if first is None:
        raise UserError(f"--driving {path}: MediaPipe found no landmarks in any frame")
    landmarks = [first if lm is None else lm for lm in landmarks]  # frames before the first detection
    return Driving(crops, np.stack(landmarks).astype(np.float32), lost, info.fps, read_audio(path), truncated)


def identity_embedder(backend: str, id_dim: int):
    from src.faces.identity import make_embedder

    embedder = make_embedder(backend)
    if embedder.dim != id_dim:
        raise UserError(f"the checkpoint was trained with {id_dim}-D identity embeddings but the {embedder.name} "
                        f"backend gives {embedder.dim}-D: pass --identity-backend "
                        f"{'dlib' if id_dim == 128 else 'insightface'}")
    return embedder


@torch.no_grad()
def generate(generator, source: Source, landmarks: np.ndarray, device, batch_size: int = 8,
             progress: bool = True) -> list[np.ndarray]:
    """Frames (R, R, 3) uint8 of the source driven by `landmarks` (T, 478, 3)."""
    from tqdm import tqdm

    from src.faces.render import LandmarkRenderer, gaze_heatmaps, region_masks

    r = source.crop.shape[0]
    generator = generator.to(device).eval()
    renderer = LandmarkRenderer().to(device)
    src = torch.from_numpy(source.crop).permute(2, 0, 1).float().div(255)[None].to(device)
    src_points = torch.from_numpy(source.landmarks)[None].to(device)
    src_lmk = renderer(src_points, r)
    identity = torch.from_numpy(source.embedding)[None].to(device)
    feats = generator.source_features(src)  # once per video
    out = []
    with tqdm(total=len(landmarks), desc="animate", unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(landmarks), batch_size):
            lm = torch.from_numpy(landmarks[start : start + batch_size]).to(device)
            n = len(lm)
            frames = generator(source=src.expand(n, -1, -1, -1), source_lmk=src_lmk.expand(n, -1, -1, -1),
                               driving_lmk=renderer(lm, r), identity=identity.expand(n, -1),
                               gaze=gaze_heatmaps(lm, r), mouth_mask=region_masks(lm, r)[1],
                               source_feats=feats, source_points=src_points, driving_points=lm)["output"]
            out += list((frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
            bar.update(n)
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


def _even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]  # H.264 in yuv420p needs even sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m src.animate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (refine, meta or personalize)")
    p.add_argument("--source", required=True, type=Path, help="portrait image, or a video (its first frame)")
    p.add_argument("--driving", required=True, type=Path, help="driving video")
    p.add_argument("--output", required=True, type=Path, help="the mp4 to write")
    p.add_argument("--sr-checkpoint", type=Path, default=None, help="a TemporalSR checkpoint, applied after generation (its input size must be the generator's)")
    p.add_argument("--motion", choices=["relative", "absolute"], default="relative",
                   help="relative: driver's motion on the source's face (default); absolute: driver's landmarks")
    p.add_argument("--paste-back", action="store_true", help="blend the face back into the full source picture")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--identity-backend", default="auto", choices=["auto", "insightface", "dlib"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be positive")
    return a


def animate(a: argparse.Namespace) -> dict:
    from src.faces.motion import inter_ocular, transfer_motion
    from src.modules.personalize_module import load_generator
    from src.personalize import resolve_device
    from src.video_io import write_video

    if a.output.exists() and not a.overwrite:
        raise UserError(f"{a.output} exists: pass --overwrite to replace it")
    if a.output.suffix.lower() != ".mp4":
        raise UserError(f"--output {a.output}: the output is an .mp4 file")
    t0 = time.time()
    device = resolve_device(a.device)
    generator, cfg, id_dim = load_generator(a.checkpoint)
    resolution = cfg["model"]["resolution"]
    sr = None
    if a.sr_checkpoint is not None:
        from src.upscale import load_sr

        sr, sr_cfg = load_sr(a.sr_checkpoint)
        if sr.cfg.in_size != resolution:
            raise UserError(f"--sr-checkpoint {a.sr_checkpoint} takes {sr.cfg.in_size}px frames but the generator "
                            f"renders {resolution}px: train SR on this base model's preset")
    source = prepare_source(a.source, resolution, identity_embedder(a.identity_backend, id_dim))
    driving = prepare_driving(a.driving, resolution)
    if driving.lost:
        print(f"animate: the face was lost on {driving.lost} of {len(driving.crops)} driving frames; "
              f"held the last good landmarks there", file=sys.stderr)
    if driving.truncated:
        print(f"animate: {a.driving} is damaged; using its first {len(driving.crops)} decodable frames", file=sys.stderr)
    landmarks = transfer_motion(source.landmarks, driving.landmarks, a.motion)
    frames = generate(generator, source, landmarks, device, a.batch_size, progress=not a.quiet)
    if sr is not None:
        from src.upscale import upscale

        frames = upscale(sr, frames, sr_cfg["sr"]["window"], device)
    if a.paste_back:
        frames = [paste_back(source.picture, source.box, f) for f in frames]
    frames = [_even(f) for f in frames]
    audio = None, 16000
    if driving.audio is not None:
        audio = driving.audio[0].mean(0).astype(np.float32), driving.audio[1]
    a.output.parent.mkdir(parents=True, exist_ok=True)
    write_video(a.output, frames, fps=driving.fps, audio=audio[0], sample_rate=audio[1])
    summary = {
        "output": str(a.output), "frames": len(frames), "fps": driving.fps, "size": list(frames[0].shape[1::-1]),
        "motion": a.motion, "faces_in_source": source.faces_found, "driving_frames_face_lost": driving.lost,
        "audio": driving.audio is not None, "super_resolution": sr is not None, "paste_back": a.paste_back,
        "inter_ocular": {"source": float(inter_ocular(source.landmarks)),
                         "driving_mean": float(inter_ocular(driving.landmarks).mean()),
                         "used_mean": float(inter_ocular(landmarks).mean())},
        "seconds": round(time.time() - t0, 1),
    }
    return summary


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    summary = animate(a)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
