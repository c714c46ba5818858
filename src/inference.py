"""Inference: the one way a trained generator (and SR model) is driven, for every pipeline.

`animate` (python -m src.animate), `evaluate`, SR's LQ renders (src/stages/sr_data.py) and the demo call these:
- `find_faces` / `prepare_sources` / `prepare_source_video` / `prepare_driving`: raw pictures and videos ->
  crops and MediaPipe landmarks, the way preprocessing crops training data;
- `iter_generate` (and `generate`, its list): a source driven by a sequence of landmarks, the source encoded
  once (or per frame, for a source video), frames in batches;
- `iter_super_resolve` (and `super_resolve`): frames through a temporal SR model, window by window;
- `animate`: files in, an mp4 out.

Videos are streamed: a clip is decoded once to find its face, once for its landmarks, and frames are then
generated, upscaled, pasted and encoded batch by batch, so memory does not grow with the video's length
(only the landmarks, 5.7 KB a frame, are held).
"""
from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from src.controls import check_controls
from src.errors import UserError
from src.images import to_tensor, to_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MESH_SIZE = 256   # MediaPipe runs on crops of at least this size (as preprocessing); landmarks are normalised
DETECT_EVERY = 10  # face detection on every 10th frame of a video (the crop box follows the union of those)


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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the torch runtime's `--precision` on `device` (None: plain fp32). `auto` takes bf16
    only where it was measured faster: a CPU with AMX tiles (Intel Sapphire Rapids and later: 2.6x on the full
    preset, BENCHMARKS.md "Inference speed"). CPUs without native bf16 emulate it, and on a GPU it has not been
    measured yet (make bench-gpu times both), so they stay on fp32 unless bf16 is asked for."""
    if precision == "auto":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private in torch 2.x: absent = no
        precision = "bf16" if device.type == "cpu" and amx() else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def for_precision(generator, precision: str, device: torch.device):
    """(the generator made ready for `precision` on `device`, a factory of the autocast context its forward passes
    run in). bf16 puts the weights in channels_last, the layout where oneDNN's bf16 convolutions gain; fp32 puts them
    back in the default layout (the module is changed in place, so a generator used in bf16 before runs fp32 as a
    fresh one does)."""
    dtype = autocast_dtype(precision, device)
    generator = generator.to(memory_format=torch.channels_last if dtype is not None else torch.contiguous_format)
    return generator, lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class Source:
    crop: np.ndarray       # (R, R, 3) uint8
    landmarks: np.ndarray  # (478, 3) normalised to the crop
    embedding: np.ndarray  # identity embedding (id_dim,)
    picture: np.ndarray | None = None  # the full source image (RGB), for paste-back
    box: tuple | None = None           # (cx, cy, side) crop square in the picture
    faces_found: int = 1
    index: int = 1                     # which face of the picture (1-based, left to right)


@dataclass
class SourceVideo:
    """A source video for video-to-video: one stable crop square, landmarks per frame, and for frames where
    the face was lost the frame that stands in for them (the last good one; the first good one before it)."""
    path: Path
    first: Source          # the first frame with a face: its crop, landmarks, identity embedding and picture
    landmarks: np.ndarray  # (T, 478, 3), the held frame's where the face was lost
    held: np.ndarray       # (T,) int: the frame whose picture and landmarks frame t uses
    fps: float
    truncated: bool = False  # damaged: a decoding error, or fewer frames than the container declares
    declared: int = 0

    @property
    def lost(self) -> int:
        return int((self.held != np.arange(len(self.held))).sum())

    def pictures(self) -> Iterator[np.ndarray]:
        """The full frames, decoded again, each lost one replaced by its held frame."""
        from src.video_io import DecodableFrames

        first_good, last = int(self.held[0]), None
        for t, frame in enumerate(DecodableFrames(self.path)):
            if t >= len(self.held):
                return
            if self.held[t] == t:
                last = frame  # a frame with a face: it stands in for the lost ones after it
            if t >= first_good:  # the frames before the first good one come out with it
                yield from itertools.repeat(last, first_good + 1 if t == first_good else 1)


@dataclass
class Driving:
    landmarks: np.ndarray | None  # (T, 478, 3) normalised to the crop square (animate drops them once used)
    lost: int              # frames whose landmarks were held from the last good frame
    fps: float
    truncated: bool        # damaged: a decoding error, or fewer frames than the container declares
    declared: int = 0      # frames the container declares (0: unknown)
    frames: int = field(init=False)

    def __post_init__(self):
        self.frames = len(self.landmarks)


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


def find_faces(picture: np.ndarray) -> list:
    """The faces (detector boxes) of a picture, left to right: the order --face INDEX counts in (from 1)."""
    from src.faces.tracking import detect_sampled

    return sorted(detect_sampled([picture], 1)[0], key=lambda b: b.center[0])


def describe_faces(boxes: list) -> str:
    return "; ".join(f"{i} at x {b.left:.0f}-{b.right:.0f}, y {b.top:.0f}-{b.bottom:.0f} ({b.width:.0f} px wide)"
                     for i, b in enumerate(boxes, 1))


def list_faces(path: Path) -> list[dict]:
    """The faces of a picture (or a video's first frame), left to right: number (for --face) and box."""
    return [{"face": i, "box": [round(b.left), round(b.top), round(b.right), round(b.bottom)],
             "width": round(b.width), "score": round(float(b.score), 3)}
            for i, b in enumerate(find_faces(read_picture(Path(path))), 1)]


def select_faces(boxes: list, face: str, path: Path) -> list[tuple[int, object]]:
    """(1-based index, box) of the faces `face` asks for: largest, all, or an index."""
    if not boxes:
        raise UserError(f"--source {path}: no face found")
    numbered = list(enumerate(boxes, 1))
    if face == "largest":
        return [max(numbered, key=lambda ib: ib[1].area)]
    if face == "all":
        return numbered
    k = int(face)
    if not 1 <= k <= len(boxes):
        raise UserError(f"--face {k}: {path.name} has {len(boxes)} face(s): {describe_faces(boxes)}")
    return [numbered[k - 1]]


def _source_from(picture: np.ndarray, box: tuple, landmarks: np.ndarray, resolution: int, embedder) -> Source:
    """The Source cut from `picture` at the crop square `box`, whose face has `landmarks`."""
    from src.faces.identity import clip_embedding
    from src.faces.tracking import crop_frame

    # the identity embedding from the sharpest crop available, as preprocessing does (512 when possible)
    id_crop = crop_frame(picture, box, 512 if box[2] >= 0.85 * 512 else max(resolution, MESH_SIZE))
    return Source(crop_frame(picture, box, resolution), landmarks, clip_embedding(embedder, [id_crop], [landmarks]),
                  picture, box)


def prepare_sources(path: Path, resolution: int, embedder, face: str = "largest") -> list[Source]:
    """The source faces of a picture (or a video's first frame) that `face` asks for (largest, all, INDEX).
    Under `all`, faces MediaPipe cannot mesh are skipped with a message; otherwise they are an error."""
    from src.faces.landmarks import FaceMesh, centred_face
    from src.faces.tracking import CROP_SCALE, crop_box, crop_frame

    picture = read_picture(path)
    boxes = find_faces(picture)
    chosen = select_faces(boxes, face, path)
    if face == "largest" and len(boxes) > 1:
        print(f"animate: {len(boxes)} faces in {path.name}; using the largest (--face all or --face INDEX "
              f"for others; --list-faces lists them)", file=sys.stderr)
    sources = []
    with FaceMesh(static=True) as mesh:
        for index, det in chosen:
            box = crop_box([det], CROP_SCALE)
            faces = mesh(crop_frame(picture, box, max(resolution, MESH_SIZE)))
            if not centred_face(faces) and face != "all":
                raise UserError(f"--source {path}: a face was detected but MediaPipe found no landmarks on it "
                                f"(too small, turned away or occluded?)")
            if not centred_face(faces):
                print(f"animate: face {index} of {path.name} has no MediaPipe landmarks (too small, turned away "
                      f"or occluded?); it is left as it is", file=sys.stderr)
                continue
            source = _source_from(picture, box, faces[0], resolution, embedder)
            source.faces_found, source.index = len(boxes), index
            sources.append(source)
    if not sources:
        raise UserError(f"--source {path}: MediaPipe found landmarks on none of its {len(boxes)} faces")
    return sources


def prepare_source(path: Path, resolution: int, embedder) -> Source:
    """The largest face of a picture (or a video's first frame)."""
    return prepare_sources(path, resolution, embedder, "largest")[0]


def _held(found: list[bool]) -> np.ndarray:
    """For each frame, the frame standing in for it: itself when its face was found, else the last found one
    before it (the first found one, before any)."""
    good = [t for t, ok in enumerate(found) if ok]
    held, last = np.empty(len(found), np.int64), good[0]
    for t, ok in enumerate(found):
        last = t if ok else last
        held[t] = last
    return held


@dataclass
class _Tracked:
    """A video's main face, followed: what prepare_driving and prepare_source_video share."""
    box: tuple             # the clip's stable crop square
    landmarks: np.ndarray  # (T, 478, 3), the held frame's where the face was lost
    held: np.ndarray       # (T,) the frame standing in for each frame (itself where the face was found)
    fps: float
    truncated: bool        # damaged: a decoding error, or fewer frames than the container declares
    declared: int


def _track(path: Path, what: str, resolution: int, progress: bool, on_frame=None) -> _Tracked:
    """Two decoding passes over a video: the main face's crop square (detection every DETECT_EVERY frames), then
    MediaPipe's landmarks of every frame's crop. `on_frame(frame, box, landmarks)` sees each frame where a face
    was found."""
    from tqdm import tqdm

    from src.faces.landmarks import FaceMesh, centred_face
    from src.faces.tracking import CROP_SCALE, crop_box, crop_frame, detect_in_stream, main_track
    from src.paths import require_file
    from src.video_io import DecodableFrames, probe, short_by

    info = probe(require_file(path, what, kind="video"))
    frames = DecodableFrames(path)
    detections, count = detect_in_stream(lambda: iter(frames), DETECT_EVERY)
    if count < 2:
        raise UserError(f"{what} {path}: {count} decodable frame(s); a video needs at least 2 here")
    track, _ = main_track(detections)
    if not track:
        raise UserError(f"{what} {path}: no face found")
    box = crop_box(track, CROP_SCALE)
    found = []  # per frame: whether its face was found
    landmarks = np.empty((count, 478, 3), np.float32)  # one array, filled in place: a long video's is its largest
    with FaceMesh(static=False, max_faces=1) as mesh, tqdm(total=count, desc=f"{what[2:]} landmarks", unit="frame",
                                                          disable=not progress, dynamic_ncols=True) as bar:
        for t, frame in enumerate(frames):
            crop = crop_frame(frame, box, max(resolution, MESH_SIZE))
            faces = mesh(crop)
            if t == 0 and faces:
                # MediaPipe places a video's first frame with its detector and the rest by tracking (up to about
                # 1 px apart at 256); frame 0 is relative motion's reference, so it is measured as the rest are.
                faces = mesh(crop) or faces
            found.append(centred_face(faces))
            if t == len(landmarks):  # more frames than the first pass counted
                landmarks = np.concatenate([landmarks, np.empty_like(landmarks[: max(1, len(landmarks) // 4)])])
            if found[-1]:
                landmarks[t] = faces[0]
                if on_frame is not None:
                    on_frame(frame, box, faces[0])
            bar.update()
    if not any(found):
        raise UserError(f"{what} {path}: MediaPipe found no landmarks in any frame")
    held = _held(found)
    landmarks = landmarks[: len(found)]
    for t in np.flatnonzero(held != np.arange(len(held))):  # a lost frame takes its held one's (a found frame's)
        landmarks[t] = landmarks[held[t]]
    return _Tracked(box, landmarks, held, info.fps, frames.damaged or short_by(len(found), info.declared_frames),
                    info.declared_frames)


def prepare_driving(path: Path, resolution: int, progress: bool = False) -> Driving:
    """The driving clip's landmarks, frame by frame (held from the last good frame where the face is lost)."""
    tracked = _track(path, "--driving", resolution, progress)
    lost = int((tracked.held != np.arange(len(tracked.held))).sum())
    return Driving(tracked.landmarks, lost, tracked.fps, tracked.truncated, tracked.declared)


def prepare_source_video(path: Path, resolution: int, embedder, progress: bool = False) -> SourceVideo:
    """A source video for video-to-video: its main face's crop square, landmarks per frame, the frames that
    stand in where the face is lost, and the identity embedding of its first frame with a face."""
    first: list[Source] = []

    def keep_first(frame, box, landmarks):  # the first frame with a face becomes the still Source
        if not first:
            first.append(_source_from(frame, box, landmarks, resolution, embedder))

    tracked = _track(path, "--source", resolution, progress, keep_first)
    return SourceVideo(path, first[0], tracked.landmarks, tracked.held, tracked.fps, tracked.truncated,
                       tracked.declared)


def identity_embedder(backend: str, id_dim: int):
    """The identity embedder (`auto`, `insightface` or `dlib`) a checkpoint trained on `id_dim`-D embeddings needs."""
    from src.faces.identity import backend_for_dim, make_embedder

    embedder = make_embedder(backend)
    if embedder.dim != id_dim:
        raise UserError(f"the checkpoint was trained with {id_dim}-D identity embeddings but the {embedder.name} "
                        f"backend gives {embedder.dim}-D: pass --identity-backend {backend_for_dim(id_dim)}")
    return embedder


@torch.no_grad()
def iter_generate(generator, source: Source, landmarks: np.ndarray, device, batch_size: int = 8, renderer=None,
                  source_frames: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
                  precision: str = "fp32") -> Iterator[np.ndarray]:
    """Frames (R, R, 3) uint8 of the source driven by `landmarks` (T, 478, 3), batch by batch. The still
    source is encoded once; `source_frames`, (crop, landmarks) per frame, makes each frame start from its own
    source frame instead (video-to-video; the identity stays `source`'s). `precision`: fp32, bf16 or auto
    (`for_precision`, `autocast_dtype`)."""
    from src.faces.render import LandmarkRenderer, gaze_heatmaps, region_masks

    r = source.crop.shape[0]
    generator, mixed = for_precision(generator.to(device).eval(), precision, device)
    renderer = (renderer or LandmarkRenderer()).to(device)
    identity = torch.from_numpy(np.asarray(source.embedding, np.float32))[None].to(device)

    def encoded(crops, points):
        src = to_tensor(np.stack(crops), device)
        pts = torch.from_numpy(np.asarray(points, np.float32)).to(device)
        with mixed():
            feats = generator.source_features(src)
        return src, pts, renderer(pts, r), feats

    if source_frames is None:
        still = encoded([source.crop], [source.landmarks])  # once per video
    else:
        per_frame = iter(source_frames)
    for start in range(0, len(landmarks), batch_size):
        lm = torch.from_numpy(np.asarray(landmarks[start : start + batch_size], np.float32)).to(device)
        n = len(lm)
        if source_frames is None:
            src, src_points, src_lmk, feats = still
            src, src_lmk = src.expand(n, -1, -1, -1), src_lmk.expand(n, -1, -1, -1)
        else:
            crops, points = zip(*itertools.islice(per_frame, n))
            src, src_points, src_lmk, feats = encoded(crops, points)
        guidance = dict(driving_lmk=renderer(lm, r), gaze=gaze_heatmaps(lm, r), mouth_mask=region_masks(lm, r)[1])
        with mixed():
            frames = generator(source=src, source_lmk=src_lmk, identity=identity.expand(n, -1), source_feats=feats,
                               source_points=src_points, driving_points=lm, **guidance)["output"]
        yield from to_uint8(frames)


def generate(generator, source: Source, landmarks: np.ndarray, device, batch_size: int = 8,
             progress: bool = True, renderer=None, precision: str = "fp32") -> list[np.ndarray]:
    """All frames of iter_generate, as a list (for clips that fit in memory: evaluation, SR's LQ renders)."""
    from tqdm import tqdm

    frames = iter_generate(generator, source, landmarks, device, batch_size, renderer, precision=precision)
    return list(tqdm(frames, total=len(landmarks), desc="animate", unit="frame", disable=not progress,
                     dynamic_ncols=True))


def _check_sr_size(net, frame: np.ndarray) -> None:
    size = net.cfg.in_size
    if frame.shape[:2] != (size, size):
        raise UserError(f"frames are {frame.shape[1]}x{frame.shape[0]} but this model takes {size}x{size} "
                        f"(it outputs {net.cfg.out_size}x{net.cfg.out_size})")


@torch.no_grad()
def iter_super_resolve(net, frames: Iterable[np.ndarray], window: int, device) -> Iterator[np.ndarray]:
    """Frames through a TemporalSR model in windows of `window` (the last one padded by repeating its last
    frame), taken and given back one window at a time."""
    net = net.to(device).eval()
    frames = iter(frames)
    while chunk := list(itertools.islice(frames, window)):
        for f in chunk:
            _check_sr_size(net, f)
        padded = chunk + [chunk[-1]] * (window - len(chunk))  # edge replication at the end
        yield from to_uint8(net(to_tensor(np.stack(padded), device)[None])[0, : len(chunk)])


def super_resolve(net, frames: list[np.ndarray], window: int, device, progress: bool = True) -> list[np.ndarray]:
    """All frames of iter_super_resolve, as a list; every frame's size is checked before any work."""
    from tqdm import tqdm

    for f in frames:
        _check_sr_size(net, f)
    return list(tqdm(iter_super_resolve(net, frames, window, device), total=len(frames), desc="upscale",
                     unit="frame", disable=not progress, dynamic_ncols=True))


def onnx_models(generator, checkpoint: Path, sr, sr_checkpoint: Path | None, sr_window: int | None,
                folder: Path | None, batch_size: int):
    """(OnnxGenerator, OnnxSR or None, the graphs' batch, the temporary folder to clean up or None): the graphs
    in `folder`, checked against the checkpoints, or exported now into a temporary folder."""
    import tempfile

    from src.runtime import OnnxGenerator, OnnxSR, export_graphs

    temporary = None
    if folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="animate_onnx_")
        folder = Path(temporary.name)
        export_graphs(generator, folder, batch_size, checkpoint, sr, sr_window, sr_checkpoint)
    threads = torch.get_num_threads()
    onnx_generator = OnnxGenerator(folder, checkpoint, threads)
    onnx_sr = OnnxSR(folder, sr_checkpoint, threads) if sr is not None else None
    return onnx_generator, onnx_sr, onnx_generator.batch, temporary


def even_size(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]  # H.264 in yuv420p needs even sizes


def _composed(streams: list, pictures: Iterator[np.ndarray] | None, colour_match: bool) -> Iterator[np.ndarray]:
    """The output frames: each stream's generated faces pasted into its picture (the still picture, or the
    source video's frame), or, without pictures, the one stream's face crops. A stream is (source crop box,
    source landmarks per frame (T, 478, 3), driven landmarks (T, 478, 3), generated frames)."""
    from src.faces.paste import colour_map, face_mask, paste_back
    from src.faces.tracking import crop_frame

    if pictures is None:
        yield from (even_size(f) for f in streams[0][3])
        return
    colours = [None] * len(streams)
    for t, (picture, *faces) in enumerate(zip(pictures, *(s[3] for s in streams))):
        out = picture
        for k, ((box, source_lm, driven_lm, _), face) in enumerate(zip(streams, faces)):
            mask = face_mask([source_lm[t], driven_lm[t]], face.shape[0])
            if t == 0 and colour_match:  # measured once, on the first frame (the source's expression)
                colours[k] = colour_map(face, crop_frame(picture, box, face.shape[0]), mask)
            out = paste_back(out, box, face, mask, colours[k])
        yield even_size(out)


def animate(checkpoint: Path, source: Path, driving: Path, output: Path, sr_checkpoint: Path | None = None,
            motion: str = "relative", paste: bool = False, batch_size: int = 8, device: str = "auto",
            identity_backend: str = "auto", overwrite: bool = False, progress: bool = True,
            smooth: int | None = None, motion_parts: str = "both", expression_scale: float = 1.0,
            eyes: str = "driving", lips: str = "driving", lip_scale: float = 1.0, face: str = "largest",
            video_to_video: bool = False, colour_match: bool = True, runtime: str = "torch",
            onnx: Path | None = None, precision: str = "auto") -> dict:
    """Drive the portrait `source` (an image, or a video's first frame) with the video `driving` and write the
    mp4 `output` (with the driving clip's audio); a summary of what was done. `motion`: relative (the driver's
    motion on the source's own face) or absolute (the driver's landmarks); `paste`: blend the face back into
    the full source picture (through a feathered mask of the face, its colours matched to the picture unless
    `colour_match` is False). `smooth`: a Savitzky-Golay window (odd frames) over the driving landmarks, None
    for the raw detections (src/faces/smoothing.py). `motion_parts` (both, pose, expression) and
    `expression_scale`: which of the driver's head pose and expression move the source; `eyes`, `lips`,
    `lip_scale`: whose eyes and mouth, and how strongly (src/faces/motion.py). `face`: largest, all (each
    animated through its own crop and pasted back) or a 1-based index, left to right. `video_to_video`: the
    source is a video; each output frame starts from its own source frame and keeps its head motion, the
    driver's expression carried onto it (motion.onto_video); the output stops at the shorter video.
    `runtime`: torch, or onnx: onnxruntime on the graphs in the folder `onnx` (src.export), or on graphs
    exported for this run into a temporary folder (src/runtime.py). `precision` of the torch runtime: auto, fp32
    or bf16 (`autocast_dtype`; the ONNX graphs are fp32)."""
    from tqdm import tqdm

    from src.checkpoints import load_generator, load_sr
    from src.faces.motion import check_pose, inter_ocular, onto_video, transfer_motion
    from src.faces.smoothing import jitter, smooth_landmarks
    from src.faces.tracking import crop_frame
    from src.memory import return_freed_buffers
    from src.paths import check_output, require_dir, require_file
    from src.video_io import damage_warning, iter_audio, write_video

    output, source, driving = Path(output), Path(source), Path(driving)
    check_controls(motion, motion_parts, expression_scale, eyes, lips, lip_scale, face, video_to_video, paste,
                   colour_match, smooth, runtime=runtime, onnx=onnx, precision=precision)
    # every input and the output checked before any work (src/paths.py)
    inputs = {"--checkpoint": require_file(checkpoint, "--checkpoint"),
              "--source": require_file(source, "--source", kind="video" if video_to_video else "picture"),
              "--driving": require_file(driving, "--driving", kind="video"),
              "--sr-checkpoint": sr_checkpoint and require_file(sr_checkpoint, "--sr-checkpoint"),
              "--onnx": onnx and require_dir(onnx, "--onnx")}
    check_output(output, inputs, overwrite=overwrite, kind="file", suffix=".mp4")
    t0 = time.time()
    return_freed_buffers()  # memory flat over a long video (src/memory.py)
    dev = resolve_device(device)
    precision = "fp32" if runtime == "onnx" or autocast_dtype(precision, dev) is None else "bf16"
    generator, cfg, id_dim = load_generator(checkpoint)
    resolution = cfg["model"]["resolution"]
    sr = sr_window = None
    if sr_checkpoint is not None:
        sr, sr_cfg = load_sr(sr_checkpoint)
        sr_window = sr_cfg["sr"]["window"]
        if sr.cfg.in_size != resolution:
            raise UserError(f"--sr-checkpoint {sr_checkpoint} takes {sr.cfg.in_size}px frames but the generator "
                            f"renders {resolution}px: train SR on this base model's preset")
    graphs = None
    if runtime == "onnx":
        generator, sr, batch_size, graphs = onnx_models(generator, checkpoint, sr, sr_checkpoint, sr_window, onnx,
                                                        batch_size)
    embedder = identity_embedder(identity_backend, id_dim)
    if video_to_video:
        video = prepare_source_video(source, resolution, embedder, progress)
        sources = [video.first]
        if video.lost:
            print(f"animate: the face was lost on {video.lost} of {len(video.held)} source frames; held the last "
                  f"good frame there", file=sys.stderr)
        if video.truncated:
            print(damage_warning("animate", source, len(video.held), video.declared), file=sys.stderr)
    else:
        video, sources = None, prepare_sources(source, resolution, embedder, face)
    if motion_parts == "expression":
        for s in sources:
            check_pose(s.landmarks, f"--source {source.name}")
    drv = prepare_driving(driving, resolution, progress)
    if drv.lost:
        print(f"animate: the face was lost on {drv.lost} of {drv.frames} driving frames; "
              f"held the last good landmarks there", file=sys.stderr)
    if drv.truncated:
        print(damage_warning("animate", driving, drv.frames, drv.declared), file=sys.stderr)
    driven = smooth_landmarks(drv.landmarks, smooth) if smooth else drv.landmarks
    controls = dict(expression_scale=expression_scale, eyes=eyes, lips=lips, lip_scale=lip_scale)
    paste, pictures = paste or face == "all", None
    generated = []  # (source, its landmarks per frame, driven landmarks, generated frames) per face
    if video is not None:
        landmarks = onto_video(video.landmarks, driven, **controls)
        if paste:  # one decoder for both: the generator runs a batch (and an SR window) ahead of the paste
            pictures, for_crops = itertools.tee(video.pictures())
        else:
            for_crops = video.pictures()
        crops = ((crop_frame(p, video.first.box, resolution), lm) for p, lm in zip(for_crops, video.landmarks))
        generated.append((video.first, video.landmarks, landmarks,
                          iter_generate(generator, video.first, landmarks, dev, batch_size, source_frames=crops,
                                        precision=precision)))
    else:
        for s in sources:
            landmarks = transfer_motion(s.landmarks, driven, motion, motion_parts, **controls)
            generated.append((s, np.broadcast_to(s.landmarks, landmarks.shape), landmarks,
                              iter_generate(generator, s, landmarks, dev, batch_size, precision=precision)))
    streams = [(s.box, source_lms, landmarks,
                frames if sr is None else iter_super_resolve(sr, frames, sr_window, dev))
               for s, source_lms, landmarks, frames in generated]
    if paste and video is None:
        pictures = itertools.repeat(sources[0].picture)
    total = len(streams[0][2])
    landmark_stats = {
        "inter_ocular": {"source": float(inter_ocular(sources[0].landmarks)),
                         "driving_mean": float(inter_ocular(drv.landmarks).mean()),
                         "used_mean": float(inter_ocular(streams[0][2]).mean())},
        "driving_jitter_px": {"raw": round(jitter(drv.landmarks, resolution), 4),
                              "used": round(jitter(driven, resolution), 4)}}
    # from here on only the streams' own landmarks are needed; the driver's raw and smoothed ones go, since on a
    # long video they are, with the streams', the only arrays that grow with its length (5.6 KB a frame each)
    drv.landmarks = driven = landmarks = None
    written = {"frames": 0, "size": None}

    def counted(frames):
        for f in tqdm(frames, total=total, desc="animate", unit="frame", disable=not progress, dynamic_ncols=True):
            written["frames"] += 1
            written["size"] = written["size"] or list(f.shape[1::-1])
            yield f

    audio = iter_audio(driving)
    try:
        write_video(output, counted(_composed(streams, pictures if paste else None, colour_match)), fps=drv.fps,
                    audio=audio and audio[0], sample_rate=audio[1] if audio else 16000, audio_to_video_end=True)
    finally:
        if graphs is not None:
            graphs.cleanup()
    return {
        "output": str(output), "frames": written["frames"], "fps": drv.fps, "size": written["size"],
        "motion": motion, "motion_parts": motion_parts, "expression_scale": expression_scale, "eyes": eyes,
        "lips": lips, "lip_scale": lip_scale, "smooth": smooth,
        "faces_in_source": sources[0].faces_found, "faces_animated": [s.index for s in sources],
        "video_to_video": video is not None, "source_frames": len(video.held) if video is not None else None,
        "source_frames_face_lost": video.lost if video is not None else None,
        "driving_frames": drv.frames, "driving_frames_face_lost": drv.lost, "driving_truncated": drv.truncated,
        "audio": audio is not None, "super_resolution": sr is not None, "paste_back": paste, "runtime": runtime,
        "precision": precision,
        "colour_match": paste and colour_match,
        **landmark_stats,
        "seconds": round(time.time() - t0, 1),
    }
