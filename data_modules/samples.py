"""What one training sample is: a source/driving pair or a temporal window, cut from one clip of the shards
(the pieces both DataModules, VoxCeleb2's and a person's own, build their datasets from)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_modules.augment import ClipAugment
from data_modules.shards import decode_frames, num_frames


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) uint8. Images cross the worker boundary as bytes (4x less than
    float) and become float in [0, 1] on the device, in `on_after_batch_transfer`."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


@dataclass
class SampleSpec:
    mode: str
    resolution: int
    samples_per_clip: int = 4
    window: int = 6
    support: int = 4
    query: int = 4
    cross_clip: bool = True
    query_tail: float = 0.0      # episodes from one clip: > 0 holds out this last fraction of it for the query
    source_frame: str = "random"  # episodes from one clip, query anywhere: a random source, or the clip's typical frame
    episodes_per_person: int | None = None  # episodes: None draws a new one every epoch, K cycles K fixed ones
    augment: bool = False
    seed: int = 0
    sr_scale: int = 2            # windows: high-resolution frames at sr_scale x resolution


def make_pair(item: dict, spec: SampleSpec, rng: np.random.Generator, aug: ClipAugment | None,
              src_idx: int | None = None, drv_idx: int | None = None) -> dict:
    n = num_frames(item)
    s = int(rng.integers(n)) if src_idx is None else src_idx
    d = int(rng.integers(n)) if drv_idx is None else drv_idx
    frames = decode_frames(item, [s, d], size=spec.resolution)
    lms = item["landmarks"][[s, d]].astype(np.float32)
    if aug is not None:
        frames, lms = aug(frames, lms, rng)
    imgs = frames_to_tensor(frames)
    return {"source": imgs[0], "driving": imgs[1], "source_landmarks": torch.from_numpy(lms[0]),
            "driving_landmarks": torch.from_numpy(lms[1]), "embedding": torch.from_numpy(item["embedding"].copy()),
            "identity": item["identity"], "key": item["key"], "frames": torch.tensor([s, d])}


def make_window(item: dict, spec: SampleSpec, start: int) -> dict:
    """T consecutive frames from `start`; a clip end shorter than T repeats its last frame."""
    n = num_frames(item)
    idx = [min(start + t, n - 1) for t in range(spec.window)]
    lq = decode_frames(item, idx, size=spec.resolution)
    hq = decode_frames(item, idx, hq=True, size=spec.sr_scale * spec.resolution)
    return {"lq": frames_to_tensor(lq), "hq": frames_to_tensor(hq),
            "landmarks": torch.from_numpy(item["landmarks"][idx].astype(np.float32)),
            "valid": torch.tensor([start + t < n for t in range(spec.window)]),
            "identity": item["identity"], "key": item["key"], "start": start}
