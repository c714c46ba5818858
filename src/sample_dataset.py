"""Build the embedded sample dataset: synthetic motion on real faces, in VoxCeleb2's folder layout.

    python -m src.sample --output data/sample

The faces are real photos that installed packages ship (the six people in insightface's `t1.jpg` and
scikit-image's astronaut). Each is animated by a smooth motion script (src/synthetic_motion.py)
and written as 25 fps H.264 clips of 2-4 s with a speech-like audio track:

    OUT/{dev,test}/mp4/<identity>/<video>/<clip>.mp4,  OUT/sample_meta.json (motion scripts, sources)

Deterministic for a seed. Interrupted runs resume (finished clips are kept); a finished dataset with the
same settings is not rebuilt. This is demo and test data, not a benchmark: the motion is synthetic.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from src.errors import UserError
from src.files import atomic_write_json, remove_partials

if TYPE_CHECKING:
    from src.faces.detect import Box

FORMAT_VERSION = 1
META_NAME = "sample_meta.json"
SETTINGS_NAME = ".sample_settings.json"


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    size: int = 640
    fps: int = 25
    videos_per_identity: int = 2
    clips_per_video: int = 2
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    max_identities: int = 7
    test_identities: int = 2
    face_fraction: float = 0.42  # face box width / frame width
    sample_rate: int = 16000
    version: int = FORMAT_VERSION


def shipped_faces() -> list[tuple[str, np.ndarray]]:
    """(source name, RGB photo) for each face photo the installed packages ship."""
    import insightface
    import skimage.data

    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    group = cv2.imread(str(t1))
    if group is None:
        raise UserError(f"cannot read {t1}: is insightface installed (make install)?")
    return [("insightface:t1.jpg", group[:, :, ::-1].copy()), ("skimage:astronaut", skimage.data.astronaut())]


def face_crops(settings: Settings) -> list[tuple[str, np.ndarray, Box]]:
    """(name, photo, face box) for every face in the shipped photos, in a fixed order."""
    from src.faces.detect import detect_faces

    faces = []
    for name, photo in shipped_faces():
        boxes = detect_faces(photo)
        if name.startswith("skimage"):
            boxes = boxes[:1]  # the astronaut's suit has a face-like patch; her face is the largest box
        for k, b in enumerate(sorted(boxes, key=lambda b: (b.left, b.top))):
            faces.append((f"{name}#face{k}", photo, b))
    return faces


def head_crop(photo: np.ndarray, box, face_fraction: float, size: int) -> np.ndarray:
    """A size x size crop with the face box `face_fraction` of its width, a little above centre;
    outside the photo is filled by reflection."""
    side = int(round(box.width / face_fraction))
    cx, cy = box.center
    cy -= 0.1 * box.height
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    padded = cv2.copyMakeBorder(photo, side, side, side, side, cv2.BORDER_REFLECT_101)
    crop = padded[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def _video_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def plan(settings: Settings) -> tuple[list[dict], dict]:
    """Identities with their crops and landmarks, and the list of clip jobs. Deterministic."""
    from src.faces.landmarks import FaceMesh, to_pixels

    rng = np.random.default_rng(settings.seed)
    identities, jobs = [], []
    sources = {}
    with FaceMesh(static=True) as mesh:
        for name, photo, box in face_crops(settings):
            if len(identities) == settings.max_identities:
                break
            ident = f"id{len(identities):05d}"
            videos = []
            for v in range(settings.videos_per_identity):
                # each "video" is another recording session: its own framing and exposure
                fraction = settings.face_fraction * (1.0 + 0.08 * v)
                crop = head_crop(photo, box, fraction, settings.size)
                gain = 1.0 + 0.06 * (rng.random() - 0.5)
                crop = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
                found = mesh(crop)
                if not found:
                    print(f"warning: no landmarks on {name} (video {v}); skipping this face", file=sys.stderr)
                    break
                video = _video_id(rng)
                sources[(ident, video)] = (crop, to_pixels(found[0], *crop.shape[:2]))
                clips = []
                for c in range(settings.clips_per_video):
                    seconds = rng.uniform(settings.min_seconds, settings.max_seconds)
                    job = {"identity": ident, "video": video, "clip": f"{c + 1:05d}",
                           "frames": int(round(seconds * settings.fps)), "seed": int(rng.integers(2**31)),
                           "f0": float(rng.uniform(100, 220))}
                    clips.append(job)
                videos.append({"video": video, "clips": clips})
            else:
                identities.append({"identity": ident, "source": name, "videos": videos})
                jobs.extend(c for v in videos for c in v["clips"])
    n_test = settings.test_identities
    if len(identities) < n_test + 4:
        raise UserError(f"only {len(identities)} usable faces found in the shipped photos; need {n_test + 4}")
    for k, ident in enumerate(identities):
        ident["split"] = "test" if k >= len(identities) - n_test else "dev"
    split = {i["identity"]: i["split"] for i in identities}
    for job in jobs:
        job["split"] = split[job["identity"]]
    return identities, {"jobs": jobs, "sources": sources}


def clip_path(root: Path, job: dict) -> Path:
    return root / job["split"] / "mp4" / job["identity"] / job["video"] / f"{job['clip']}.mp4"


_SOURCES: dict = {}


def _init_worker(sources: dict) -> None:
    cv2.setNumThreads(1)
    _SOURCES.update(sources)


def render_clip(args: tuple[dict, str, Settings]) -> dict:
    from src.synthetic_motion import FaceAnimator, make_motion_script, speech_audio
    from src.video_io import write_video

    job, root, settings = args
    crop, landmarks = _SOURCES[(job["identity"], job["video"])]
    rng = np.random.default_rng(job["seed"])
    motion = make_motion_script(rng, job["frames"], settings.fps)
    audio = speech_audio(motion.jaw, settings.fps, settings.sample_rate, job["f0"], rng)
    out = clip_path(Path(root), job)
    out.parent.mkdir(parents=True, exist_ok=True)
    animator = FaceAnimator(crop, landmarks)
    write_video(out, (animator.render(motion, i) for i in range(len(motion))), fps=settings.fps,
                audio=audio, sample_rate=settings.sample_rate, preset="veryfast")
    return {**job, "motion": motion.to_json()}


def build(output: Path, settings: Settings, workers: int = 2, quiet: bool = False) -> dict:
    """Build (or finish, or confirm) the sample dataset under `output`; returns its metadata."""
    output = Path(output)
    meta_path = output / META_NAME
    settings_path = output / SETTINGS_NAME
    wanted = asdict(settings)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == wanted:
            if not quiet:
                print(f"sample dataset already built at {output} ({meta['num_clips']} clips)")
            return meta
    if settings_path.exists() and json.loads(settings_path.read_text()) != wanted:
        raise UserError(f"{output} holds a sample dataset built with other settings; remove it or choose another "
                        "--output")
    try:
        output.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(wanted, indent=2))
    except OSError as exc:
        raise UserError(f"cannot write to {output}: {exc.strerror}; choose another --output") from None

    t0 = time.time()
    identities, work = plan(settings)
    jobs = work["jobs"]
    # A finished clip is a complete file (written atomically); its motion is re-derived from its seed.
    remove_partials(output)  # what a killed build was writing
    todo = [j for j in jobs if not clip_path(output, j).exists()]
    results = {}
    from src.synthetic_motion import make_motion_script

    for j in jobs:
        if j not in todo:
            m = make_motion_script(np.random.default_rng(j["seed"]), j["frames"], settings.fps)
            results[(j["identity"], j["video"], j["clip"])] = {**j, "motion": m.to_json()}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="clip", desc="sample clips", disable=quiet)
    args = [(j, str(output), settings) for j in todo]
    if workers > 1 and len(todo) > 1:
        # one thread per worker process: BLAS/OpenMP threads on top of the pool only thrash the cores
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        ctx = mp.get_context("spawn")  # mediapipe's threads make fork unsafe
        with ctx.Pool(workers, initializer=_init_worker, initargs=(work["sources"],)) as pool:
            for r in pool.imap_unordered(render_clip, args):
                results[(r["identity"], r["video"], r["clip"])] = r
                bar.update()
    else:
        _init_worker(work["sources"])
        for a in args:
            r = render_clip(a)
            results[(r["identity"], r["video"], r["clip"])] = r
            bar.update()
    bar.close()

    for ident in identities:
        for video in ident["videos"]:
            video["clips"] = [
                {k: v for k, v in results[(ident["identity"], video["video"], c["clip"])].items()
                 if k not in ("identity", "video", "split", "seed", "f0")}
                for c in video["clips"]
            ]
    meta = {
        "description": "synthetic motion on real faces (see src/sample_dataset.py); for demos and tests",
        "settings": wanted,
        "num_identities": len(identities),
        "num_clips": len(jobs),
        "num_frames": int(sum(j["frames"] for j in jobs)),
        "identities": identities,
    }
    atomic_write_json(meta_path, meta, indent=None)
    if not quiet:
        n_test = sum(i["split"] == "test" for i in identities)
        print(f"built {len(jobs)} clips ({meta['num_frames']} frames) of {len(identities)} identities "
              f"({n_test} held out in test) at {output} in {time.time() - t0:.1f} s")
    return meta
