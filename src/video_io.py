"""Video read/write with PyAV (H.264 + optional AAC), written atomically: a file under its final name
is always complete."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from src.errors import UserError
from src.files import partial_file


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    has_audio: bool
    declared_frames: int = 0  # what the container's index says (0: it does not say); `frames` may be fewer


def damage_warning(command: str, path, decoded: int, declared: int) -> str:
    """The one wording of 'this video decoded to fewer frames than it declares; the rest is used'."""
    of = f"the {declared} frames it declares" if declared else "its frames"
    return f"{command}: {path} is damaged: {decoded} of {of} could be decoded; using those"


def short_by(decoded: int, declared: int) -> bool:
    """Whether `decoded` frames fall short of the `declared` count by more than rounding and an edit list's
    trimmed frames (2%, at least 2): a damaged file whose index promises more than its data holds."""
    return declared > 0 and decoded < declared - max(2, 0.02 * declared)


def probe(path: str | Path) -> VideoInfo:
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"{path} has no video stream")
            v = c.streams.video[0]
            fps = float(v.average_rate or v.guessed_rate or 25)
            declared = v.frames
            if not declared and v.duration and v.time_base:  # no count in the index: its duration says as much
                declared = int(round(float(v.duration * v.time_base) * fps))
            frames = v.frames or sum(1 for _ in c.decode(video=0))
            return VideoInfo(v.codec_context.width, v.codec_context.height, fps, frames, bool(c.streams.audio),
                             declared)
    except av.FFmpegError as exc:
        raise UserError(f"cannot read video {path}: {exc}") from None


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decoded RGB uint8 frames of the first video stream."""
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in c.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise UserError(f"cannot decode video {path}: {exc}") from None


class DecodableFrames:
    """The frames of a video up to the first decoding error, one at a time; iterate it as often as needed
    (each pass decodes the file again, so memory does not grow with the video's length). `damaged` is set
    once a pass has met an error."""

    def __init__(self, path: str | Path):
        self.path, self.damaged = Path(path), False

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            yield from iter_frames(self.path)
        except UserError:
            self.damaged = True  # keep what decoded before the damage


def read_frames(path: str | Path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def iter_audio(path: str | Path) -> tuple[Iterator[np.ndarray], int] | None:
    """(mono float32 sample chunks, sample rate) of the first audio stream, decoded as they are taken; None
    without audio."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        rate = c.streams.audio[0].rate

    def chunks() -> Iterator[np.ndarray]:
        with av.open(str(path)) as c:
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
            for f in c.decode(c.streams.audio[0]):
                for r in resampler.resample(f):
                    yield r.to_ndarray().reshape(-1)
            for r in resampler.resample(None):
                yield r.to_ndarray().reshape(-1)

    return chunks(), rate


def read_audio(path: str | Path) -> tuple[np.ndarray, int] | None:
    """(samples as float32 (channels, n), sample rate) of the first audio stream, or None."""
    audio = iter_audio(path)
    if audio is None:
        return None
    chunks = list(audio[0])
    return (np.concatenate(chunks)[None] if chunks else np.zeros((1, 0), np.float32)), audio[1]


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    audio: np.ndarray | Iterable[np.ndarray] | None = None,
    sample_rate: int = 16000,
    audio_to_video_end: bool = False,
    crf: int = 18,
    preset: str = "medium",
    threads: int = 1,
) -> Path:
    """Encode RGB uint8 frames as H.264 (yuv420p) with an optional mono float32 AAC track: one array, or
    chunks of samples taken one at a time after the frames (a stream: nothing is held). `audio_to_video_end`
    cuts the audio where the video ends. Written to a temporary name and renamed, so an interrupted write
    leaves nothing under `path`."""
    path = Path(path)
    with partial_file(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as c:
        rate = Fraction(fps).limit_denominator(1001)
        v = c.add_stream("libx264", rate=rate)
        v.pix_fmt = "yuv420p"
        v.options = {"crf": str(crf), "preset": preset}
        v.thread_count = threads
        a = None
        if audio is not None:
            a = c.add_stream("aac", rate=sample_rate)
            a.layout = "mono"
        count = 0
        for img in frames:
            if count == 0:
                v.height, v.width = img.shape[:2]
            count += 1
            for packet in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(packet)
        c.mux(v.encode())
        if a is not None:
            limit = int(round(count / fps * sample_rate)) if audio_to_video_end else None
            _encode_audio(c, a, [audio] if isinstance(audio, np.ndarray) else audio, sample_rate, limit)
    return path


def _encode_audio(container, stream, chunks: Iterable[np.ndarray], sample_rate: int, limit: int | None,
                  step: int = 1024) -> None:
    """Mono float32 samples, in chunks of any length, encoded in frames of `step` (up to `limit` samples)."""
    pending, pts = np.zeros(0, np.float32), 0
    for chunk in chunks:
        pending = np.concatenate([pending, np.asarray(chunk, np.float32).reshape(-1)])
        if limit is not None:
            pending = pending[: max(0, limit - pts)]
        while len(pending) >= step:
            pts = _audio_frame(container, stream, pending[:step], sample_rate, pts)
            pending = pending[step:]
    if len(pending):
        _audio_frame(container, stream, pending, sample_rate, pts)
    container.mux(stream.encode())


def _audio_frame(container, stream, samples: np.ndarray, sample_rate: int, pts: int) -> int:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None]), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = sample_rate, pts
    container.mux(stream.encode(frame))
    return pts + len(samples)
