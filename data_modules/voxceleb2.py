"""VoxCeleb2DataModule: preprocessed shards -> training samples for every stage.

Modes (data.mode):
  pairs     stage 1: a source and a driving frame of the same clip, their landmarks, the identity embedding;
  episodes  meta-learning: one identity per item with K support, Q query frames and a source frame,
            query frames from another clip of the person when it has one (cross_clip), or from the
            same clip: anywhere, or (query_tail) its last part, split as personalization splits a clip
            (validation always splits a single clip that way, with personalization's held-out fraction);
  windows   super-resolution: T consecutive frames at 256 and 512 (clips without 512 are skipped).

`pairs` and `windows` stream with litdata: each rank (and worker) iterates its own part of the chunks.
`episodes` needs all clips of an identity, so it is map-style over identities (random access into the same
streaming dataset) and Lightning's DistributedSampler gives each rank its own identities. Datasets are
built inside `setup()`, after the Trainer has launched its processes (see lightning-notes: a litdata
dataset constructed earlier sees world_size=1).

Landmark images, gaze heat-maps and region masks are rendered on the device, after the batch moved there.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from data_modules.augment import ClipAugment
from data_modules.guidance import GuidanceDataModule, collate
from data_modules.samples import SampleSpec, frames_to_tensor, make_pair, make_window
from data_modules.shards import (
    HELDOUT_FRACTION,
    check_id_dim,
    decode_frames,
    has_hq,
    heldout_tail,
    load_manifest,
    num_frames,
    typical_frame,
)
from src.config import CHOICES
from src.errors import UserError


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:8], "little")


class ClipStream(IterableDataset):
    """pairs/windows samples from a litdata StreamingDataset of clips (one item = one clip)."""

    def __init__(self, streaming, spec: SampleSpec, deterministic: bool):
        self.ds, self.spec, self.deterministic = streaming, spec, deterministic
        self.aug = ClipAugment() if spec.augment else None
        self.epoch = 0
        self.skipped_no_hq = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        worker = get_worker_info()
        wid = worker.id if worker else 0
        epoch = 0 if self.deterministic else self.epoch
        if not self.deterministic:
            self.ds.set_epoch(epoch + 1)  # litdata counts epochs from 1; its shuffle depends on it
        for item in self.ds:
            rng = np.random.default_rng(_seed(self.spec.seed, epoch, wid, item["key"]))
            if self.spec.mode == "pairs":
                for k in range(self.spec.samples_per_clip):
                    if self.deterministic:  # validation: source = first frame, evenly spaced driving frames
                        n = num_frames(item)
                        drv = int(round((k + 1) * (n - 1) / self.spec.samples_per_clip))
                        yield make_pair(item, self.spec, rng, None, 0, drv)
                    else:
                        yield make_pair(item, self.spec, rng, self.aug)
            else:  # windows
                if not has_hq(item):
                    self.skipped_no_hq += 1
                    continue
                n = num_frames(item)
                starts = (np.linspace(0, max(n - self.spec.window, 0), self.spec.samples_per_clip).round().astype(int)
                          if self.deterministic else rng.integers(0, max(n - self.spec.window, 0) + 1,
                                                                  self.spec.samples_per_clip))
                for s in starts:
                    yield make_window(item, self.spec, int(s))


class EpisodeDataset(Dataset):
    """One identity per item: a source, K support and Q query frames (map-style, random access)."""

    def __init__(self, streaming, clips_by_identity: dict[str, list[int]], spec: SampleSpec, deterministic: bool):
        self.ds, self.spec, self.deterministic = streaming, spec, deterministic
        self.identities = sorted(clips_by_identity)
        self.clips = clips_by_identity
        self.aug = ClipAugment() if spec.augment else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, i: int) -> dict:
        ident = self.identities[i]
        # a new episode of each person every epoch (or one of a fixed pool of them), the same for a seed whatever
        # the loader's workers
        pool = self.spec.episodes_per_person
        draw = self.epoch if pool is None else self.epoch % pool
        rng = np.random.default_rng(_seed(self.spec.seed, ident, "val" if self.deterministic else draw))
        order = list(self.clips[ident]) if self.deterministic else list(rng.permutation(self.clips[ident]))
        support_item = self.ds[int(order[0])]
        query_item = self.ds[int(order[1])] if self.spec.cross_clip and len(order) > 1 else support_item
        k, q = self.spec.support, self.spec.query
        n_s, n_q = num_frames(support_item), num_frames(query_item)
        if query_item is support_item and (self.spec.query_tail > 0 or self.deterministic):
            # validation is always judged as personalization is: the clip's held-out tail from its typical frame
            s_idx, q_idx = self._tail_split(support_item, n_s, k, q, rng, self.spec.query_tail or HELDOUT_FRACTION)
        elif query_item is support_item:  # one clip: the source, support and query frames are all different frames
            if self.spec.source_frame == "typical":  # the frame src.personalize drives from, then others
                src = typical_frame(support_item["landmarks"], 0, n_s)
                others = np.delete(np.arange(n_s), src)
                pick = np.concatenate([[src], rng.choice(others, k + q, replace=len(others) < k + q)])
            else:
                pick = rng.choice(n_s, k + 1 + q, replace=n_s < k + 1 + q)
            s_idx, q_idx = pick[: k + 1], pick[k + 1 :]
        elif self.deterministic:
            s_idx = np.linspace(1, n_s - 1, k + 1).round().astype(int)  # [source, support...]
            q_idx = np.linspace(0, n_q - 1, q).round().astype(int)
            s_idx[0] = 0
        else:
            s_idx = rng.choice(n_s, k + 1, replace=n_s < k + 1)
            q_idx = rng.choice(n_q, q, replace=n_q < q)
        s_frames = decode_frames(support_item, s_idx, size=self.spec.resolution)
        q_frames = decode_frames(query_item, q_idx, size=self.spec.resolution)
        frames = np.concatenate([s_frames, q_frames])
        lms = np.concatenate([support_item["landmarks"][s_idx], query_item["landmarks"][q_idx]]).astype(np.float32)
        if self.aug is not None:
            frames, lms = self.aug(frames, lms, rng)
        imgs, lms = frames_to_tensor(frames), torch.from_numpy(lms)
        return {
            "source": imgs[0], "source_landmarks": lms[0],
            "support": imgs[1 : k + 1], "support_landmarks": lms[1 : k + 1],
            "query": imgs[k + 1 :], "query_landmarks": lms[k + 1 :],
            "embedding": torch.from_numpy(support_item["embedding"].copy()),
            "identity": ident, "support_key": support_item["key"], "query_key": query_item["key"],
            "support_index": torch.from_numpy(s_idx.astype(np.int64)),
            "query_index": torch.from_numpy(q_idx.astype(np.int64)),
        }

    def _tail_split(self, item: dict, n: int, k: int, q: int, rng: np.random.Generator,
                    fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """[source, support...] and query frame indices as personalization splits a clip: the query is its last
        `fraction`, the support comes from before it, and the source is the typical frame of that part (the frame
        src.personalize drives held-out frames from)."""
        head = n - heldout_tail(n, fraction)
        if head < 2:
            raise UserError(f"{item['key']}: {n} frames are too few to hold out {fraction:.0%} of them for the "
                            "query and keep a source and support frames before it")
        src = typical_frame(item["landmarks"], 0, head)
        others = np.delete(np.arange(head), src)
        if self.deterministic:  # spread over the head and the tail
            support = others[np.linspace(0, len(others) - 1, k).round().astype(int)]
            query = np.linspace(head, n - 1, q).round().astype(int)
        else:
            support = rng.choice(others, k, replace=len(others) < k)
            query = rng.choice(np.arange(head, n), q, replace=n - head < q)
        return np.concatenate([[src], support]), query


class VoxCeleb2DataModule(GuidanceDataModule):
    def __init__(self, root: str, mode: str = "pairs", resolution: int = 256, batch_size: int = 4,
                 num_workers: int = 2, train_split: str = "dev", val_split: str = "test", augment: bool = True,
                 samples_per_clip: int = 4, window: int = 6, support: int = 4, query: int = 4,
                 cross_clip: bool = True, query_tail: float = 0.0, id_dim: int | None = None, render: bool = True,
                 seed: int = 0, edges: str = "contours", sr_scale: int = 2, source_frame: str = "random",
                 episodes_per_person: int | None = None):
        super().__init__()
        if mode not in CHOICES["data.mode"]:
            raise UserError(f"data.mode must be one of {', '.join(CHOICES['data.mode'])}, got '{mode}'")
        self.root, self.mode = Path(root), mode
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_split, self.val_split = train_split, val_split
        self.render, self.edges = render, edges
        if not 0 <= query_tail < 1:
            raise UserError(f"meta.query_tail must be in [0, 1), got {query_tail}")
        if source_frame not in CHOICES["meta.source_frame"]:
            raise UserError(f"meta.source_frame must be one of {', '.join(CHOICES['meta.source_frame'])}, "
                            f"got '{source_frame}'")
        if episodes_per_person is not None and episodes_per_person < 1:
            raise UserError(f"meta.episodes_per_person must be null or >= 1, got {episodes_per_person}")
        self.spec = SampleSpec(mode, resolution, samples_per_clip=samples_per_clip, window=window, support=support,
                               query=query, cross_clip=cross_clip, query_tail=query_tail, source_frame=source_frame,
                               episodes_per_person=episodes_per_person, augment=augment, seed=seed, sr_scale=sr_scale)
        self.requested_id_dim = id_dim
        self.manifest = load_manifest(self.root)  # cheap JSON; validates the folder early
        self.id_dim = check_id_dim(id_dim, self.manifest)
        self.train_set = self.val_set = None
        self.train_epochs_started = 0  # passes over the training data so far, resumed ones included

    @classmethod
    def from_config(cls, cfg, root: str | None = None) -> VoxCeleb2DataModule:
        """The DataModule of a composed config (root: another shard folder than data.root, e.g. SR's LQ renders)."""
        d = cfg.data
        extra = {}
        if "meta" in cfg:  # episode sizes are the meta stage's settings
            extra.update(support=cfg.meta.support_frames, query=cfg.meta.query_frames,
                         cross_clip=cfg.meta.query_from_other_clip, query_tail=cfg.meta.query_tail,
                         source_frame=cfg.meta.source_frame, episodes_per_person=cfg.meta.episodes_per_person)
        if "sr" in cfg:  # window length is the SR stage's setting, the HQ size the SR model's
            extra.update(window=cfg.sr.window, sr_scale=cfg.model.sr.scale)
        return cls(root=root or d.root, mode=d.mode, resolution=d.resolution, batch_size=d.batch_size,
                   num_workers=d.num_workers, train_split=d.train_split, val_split=d.val_split,
                   augment=d.augment, samples_per_clip=d.samples_per_clip, id_dim=cfg.model.id_dim, seed=cfg.seed,
                   **extra)

    # ---------------------------------------------------------------------------------------------------
    def identities(self, split: str) -> list[str]:
        return self.manifest["splits"].get(split, {}).get("identities", [])

    def setup(self, stage: str | None = None) -> None:
        for split in {self.train_split, self.val_split}:
            if split not in self.manifest["splits"]:
                raise UserError(f"split '{split}' is not in {self.root} (has: {', '.join(self.manifest['splits'])})")
        shared = set(self.identities(self.train_split)) & set(self.identities(self.val_split))
        if self.train_split != self.val_split and shared:
            raise UserError(f"validation is not identity-disjoint: {sorted(shared)[:5]} appear in both "
                            f"'{self.train_split}' and '{self.val_split}'")
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset(self.train_split, deterministic=False)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self._dataset(self.val_split, deterministic=True)

    def _dataset(self, split: str, deterministic: bool):
        from litdata import StreamingDataset

        spec = SampleSpec(**{**self.spec.__dict__, "augment": self.spec.augment and not deterministic})
        # Streaming order is shuffled for training; validation reads in a fixed order.
        streaming = StreamingDataset(str(self.root / split), shuffle=not deterministic, seed=self.spec.seed,
                                     drop_last=not deterministic)
        if self.mode == "episodes":
            by_id: dict[str, list[int]] = {}
            for clip in self.manifest["clips"]:
                if clip["split"] == split:
                    by_id.setdefault(clip["identity"], []).append(clip["index"])
            return EpisodeDataset(streaming, by_id, spec, deterministic)
        return ClipStream(streaming, spec, deterministic)

    def _loader(self, dataset, train: bool) -> DataLoader:
        is_map = isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset)
        return EpochLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                           shuffle=train and is_map, drop_last=train, collate_fn=collate,
                           persistent_workers=False, pin_memory=torch.cuda.is_available(),
                           seed=self.spec.seed, next_epoch=self._next_train_epoch if train else None)

    def _next_train_epoch(self) -> int:
        self.train_epochs_started += 1
        return self.train_epochs_started - 1

    # Lightning keeps this in checkpoints and restores it on resume. Its own epoch counters cannot number the
    # data: resumed from a checkpoint of an epoch's last step, the next epoch still reads as the one before.
    def state_dict(self) -> dict:
        return {"train_epochs_started": self.train_epochs_started}

    def load_state_dict(self, state: dict) -> None:
        self.train_epochs_started = int(state["train_epochs_started"])

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, train=False)


class EpochLoader(DataLoader):
    """A DataLoader whose every pass is a function of (seed, epoch): before each pass it tells its dataset which
    epoch starts and reseeds its own generator (the shuffle order, the workers' seeds). `next_epoch()` numbers the
    passes: the loader's own count from 0 by default; the DataModule's training loader takes the DataModule's
    count, which checkpoints keep, so a resumed run goes on with the data an uninterrupted run would have seen.
    Set from the main process: worker processes get a fresh copy of the dataset every epoch, so a counter kept
    inside them never advances."""

    def __init__(self, *args, seed: int = 0, next_epoch: Callable[[], int] | None = None, **kwargs):
        kwargs.setdefault("generator", torch.Generator())  # Lightning re-creating the loader (DDP) passes its own
        super().__init__(*args, **kwargs)
        self.seed, self.next_epoch = seed, next_epoch or itertools.count().__next__

    def __iter__(self):
        epoch = self.next_epoch()
        self.generator.manual_seed(_seed(self.seed, "loader", epoch) % 2**63)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return super().__iter__()
