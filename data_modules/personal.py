"""PersonalVideoDataModule: samples from one person's preprocessed video(s), for personalization.

The last `heldout_fraction` of every clip is held out for validation (a temporal tail, so validation
frames are never neighbours of training frames); training samples come from the rest. Modes: `pairs`
(source and driving from the training part; validation drives one source frame, below, with each held-out
frame) and `windows` (T consecutive frames at 256 and 512).

Training sample i is drawn from (seed, first_sample + i). A run resumed after n steps of batch b passes
first_sample=n*b: Lightning iterates a map-style loader from its start again and stops the epoch n batches early,
so the resumed run gets the samples the uninterrupted one had from there on.

The validation source is the clip's most typical training frame (`source_frame="typical"`: the one whose
landmarks are nearest the per-point median of the training part), not whatever the first frame happens to be: a
clip that opens zoomed out or mid-turn would otherwise judge every held-out frame against an unrepresentative
source. `source_frame="first"` keeps the first frame (the stage-1 validation's choice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.augment import ClipAugment
from data_modules.guidance import GuidanceDataModule, collate
from data_modules.samples import SampleSpec, make_pair, make_window
from data_modules.shards import (
    HELDOUT_FRACTION,
    SOURCE_FRAMES,
    check_id_dim,
    has_hq,
    heldout_tail,
    load_manifest,
    num_frames,
    typical_frame,
)
from src.errors import UserError


class _PersonalSamples(Dataset):
    def __init__(self, items: list[dict], ranges: list[tuple[int, int]], spec: SampleSpec, length: int | None,
                 train: bool, sources: list[int] | None = None, first_sample: int = 0):
        self.items, self.ranges, self.spec, self.train, self.sources = items, ranges, spec, train, sources
        self.first_sample = first_sample
        self.aug = ClipAugment() if spec.augment and train else None
        # validation enumerates every held-out frame (pairs) or window start (windows) once
        self.fixed = None if train else [
            (c, f) for c, (lo, hi) in enumerate(ranges)
            for f in (range(lo, hi) if spec.mode == "pairs" else range(lo, max(lo + 1, hi - spec.window + 1)))
        ]
        self.length = length if train else len(self.fixed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if self.train:
            rng = np.random.default_rng((self.spec.seed, self.first_sample + i, torch.initial_seed() % 2**32))
            c = int(rng.integers(len(self.items)))
            lo, hi = self.ranges[c]
            if self.spec.mode == "pairs":
                s, d = rng.integers(lo, hi, 2)
                return make_pair(self.items[c], self.spec, rng, self.aug, int(s), int(d))
            return make_window(self.items[c], self.spec, int(rng.integers(lo, max(lo + 1, hi - self.spec.window + 1))))
        c, f = self.fixed[i]
        if self.spec.mode == "pairs":
            return make_pair(self.items[c], self.spec, np.random.default_rng(0), None, self.sources[c], f)
        return make_window(self.items[c], self.spec, f)


class PersonalVideoDataModule(GuidanceDataModule):
    def __init__(self, root: str, mode: str = "pairs", resolution: int = 256, batch_size: int = 4,
                 num_workers: int = 0, heldout_fraction: float = HELDOUT_FRACTION, min_train_frames: int = 8,
                 samples_per_epoch: int = 200, window: int = 6, augment: bool = True, id_dim: int | None = None,
                 render: bool = True, seed: int = 0, identities: list[str] | None = None,
                 source_frame: str = "typical", first_sample: int = 0):
        super().__init__()
        if first_sample < 0:
            raise UserError(f"first_sample must be >= 0, not {first_sample}")
        self.first_sample = first_sample
        if mode not in ("pairs", "windows"):
            raise UserError(f"PersonalVideoDataModule supports modes pairs and windows, not '{mode}'")
        if source_frame not in SOURCE_FRAMES:
            raise UserError(f"source_frame must be one of {', '.join(SOURCE_FRAMES)}, not '{source_frame}'")
        self.source_frame = source_frame
        if not 0 < heldout_fraction < 1:
            raise UserError("heldout_fraction must be between 0 and 1")
        self.root, self.batch_size, self.num_workers = Path(root), batch_size, num_workers
        self.heldout_fraction, self.min_train_frames = heldout_fraction, min_train_frames
        self.samples_per_epoch, self.render = samples_per_epoch, render
        self.spec = SampleSpec(mode, resolution, window=window, augment=augment, seed=seed)
        self.manifest = load_manifest(self.root)
        self.id_dim = check_id_dim(id_dim, self.manifest)
        self.identities = set(identities) if identities else None  # restrict a multi-person shard folder
        self.items: list[dict] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.items is not None:
            return
        from litdata import StreamingDataset

        items = []
        for split in self.manifest["splits"]:
            ds = StreamingDataset(str(self.root / split))
            wanted = [c["index"] for c in self.manifest["clips"] if c["split"] == split
                      and (self.identities is None or c["identity"] in self.identities)]
            items += [ds[i] for i in wanted]
        if self.spec.mode == "windows":
            items = [it for it in items if has_hq(it)]
        if not items:
            with_512 = " with 512 crops" if self.spec.mode == "windows" else ""
            raise UserError(f"no usable clips in {self.root}{with_512}")
        self.items = items
        self.train_ranges, self.val_ranges, self.sources = [], [], []
        for it in items:
            n = num_frames(it)
            tail = heldout_tail(n, self.heldout_fraction)
            if n - tail < self.min_train_frames:
                raise UserError(f"{it['key']}: {n} usable frames are too few to hold out {self.heldout_fraction:.0%} "
                                f"and keep {self.min_train_frames} for training; use a longer video or a smaller "
                                "held-out fraction")
            self.train_ranges.append((0, n - tail))
            self.val_ranges.append((n - tail, n))
            # chosen among training frames only, so the held-out tail stays unseen
            self.sources.append(typical_frame(it["landmarks"], 0, n - tail) if self.source_frame == "typical" else 0)

    @property
    def embedding(self) -> np.ndarray:
        """The person's identity embedding (mean over clips, normalised)."""
        self.setup()
        e = np.mean([it["embedding"] for it in self.items], axis=0)
        return e / (np.linalg.norm(e) + 1e-8)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = _PersonalSamples(self.items, self.train_ranges, self.spec, self.samples_per_epoch, train=True,
                              first_sample=self.first_sample)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False,
                          drop_last=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        ds = _PersonalSamples(self.items, self.val_ranges, self.spec, None, train=False, sources=self.sources)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate)
