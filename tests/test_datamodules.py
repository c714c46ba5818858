"""DataModules on real preprocessed shards: every mode's shapes, dtypes and ranges, sample identity,
augmentations and flips that keep landmarks on the face, rendering, and the id_dim check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from data_modules.augment import ClipAugment, hflip
from data_modules.personal import PersonalVideoDataModule, typical_frame
from data_modules.samples import SampleSpec, make_window
from data_modules.shards import decode_frames, load_manifest
from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.errors import UserError
from src.faces.landmarks import FaceMesh
from src.faces.render import LandmarkRenderer, gaze_heatmaps, region_masks


def _batch(dm, loader):
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


def test_pairs_mode(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="pairs", resolution=64, batch_size=4, num_workers=0)
    dm.setup("fit")
    b = _batch(dm, dm.train_dataloader())
    assert b["source"].shape == b["driving"].shape == (4, 3, 64, 64) and b["source"].dtype == torch.float32
    assert 0 <= b["source"].min() and b["source"].max() <= 1 and b["source"].std() > 0.05
    assert b["driving_landmarks"].shape == (4, 478, 3) and b["embedding"].shape == (4, dm.id_dim)
    assert b["driving_lmk_img"].shape == (4, 3, 64, 64) and b["driving_gaze"].shape == (4, 2, 64, 64)
    assert b["driving_eye_mask"].shape == b["driving_mouth_mask"].shape == (4, 1, 64, 64)
    # source and driving come from the same clip: the embedding is that clip's, from the train split
    manifest = load_manifest(shards)
    dev_keys = {c["key"] for c in manifest["clips"] if c["split"] == "dev"}
    assert set(b["key"]) <= dev_keys
    ds = StreamingDataset(str(shards / "dev"))
    by_key = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    for i, key in enumerate(b["key"]):
        item = by_key[key]
        assert np.allclose(b["embedding"][i].numpy(), item["embedding"])
        s, d = b["frames"][i].tolist()
        assert 0 <= s < len(item["landmarks"]) and 0 <= d < len(item["landmarks"])
    # validation: held-out identities, source = first frame of the clip, fixed across calls
    v1, v2 = _batch(dm, dm.val_dataloader()), _batch(dm, dm.val_dataloader())
    assert set(v1["identity"]) <= {"id90010", "id90012"}
    assert (v1["frames"][:, 0] == 0).all() and torch.equal(v1["driving"], v2["driving"])


def test_episodes_mode(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=0,
                             support=3, query=2)
    dm.setup("fit")
    ds = dm.train_set
    multi = [i for i, ident in enumerate(ds.identities) if len(ds.clips[ident]) > 1]
    item = ds[multi[0]]
    assert item["support"].shape == (3, 3, 64, 64) and item["query"].shape == (2, 3, 64, 64)
    assert item["support_key"] != item["query_key"]  # query from another clip of the same person
    assert item["support_key"].split("/")[1] == item["query_key"].split("/")[1] == item["identity"]
    b = _batch(dm, dm.train_dataloader())
    assert b["support_lmk_img"].shape == (2, 3, 3, 64, 64) and b["query_mouth_mask"].shape == (2, 2, 1, 64, 64)
    assert len(set(b["identity"])) == 2  # one identity per item


def test_episodes_from_one_clip_use_distinct_frames_and_validate_on_the_tail(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=0,
                             support=3, query=2, cross_clip=False)
    dm.setup("fit")
    for ds in (dm.train_set, dm.val_set):
        for i in range(len(ds)):
            item = ds[i]
            assert item["support_key"] == item["query_key"]
            frames = [*item["support_index"].tolist(), *item["query_index"].tolist()]  # [source, support..., query...]
            assert len(set(frames)) == 6, frames  # the clips have 30 frames: no frame is used twice
    # validation as personalization judges: the clip's last 20 % driven from the typical frame before it
    val_clips = StreamingDataset(str(shards / dm.val_split))
    by_key = {val_clips[i]["key"]: val_clips[i]["landmarks"] for i in range(len(val_clips))}
    for i in range(len(dm.val_set)):
        val = dm.val_set[i]
        lms = by_key[val["support_key"]]
        head = len(lms) - max(1, round(0.2 * len(lms)))
        assert val["query_index"].min() >= head > val["support_index"].max()
        assert val["support_index"][0] == typical_frame(lms, 0, head)


def test_episodes_query_tail_split_a_clip_as_personalization_does(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=0,
                             support=3, query=2, cross_clip=False, query_tail=0.2)
    dm.setup("fit")
    by_key = {}
    for split in ("dev", "test"):
        ds = StreamingDataset(str(shards / split))
        by_key.update({ds[i]["key"]: ds[i] for i in range(len(ds))})
    for dataset in (dm.train_set, dm.val_set):
        for i in range(len(dataset)):
            item = dataset[i]
            lms = by_key[item["support_key"]]["landmarks"]
            n = len(lms)
            head = n - max(1, round(0.2 * n))  # the fixture clips have 30 frames: 24 + a tail of 6
            src, support = int(item["support_index"][0]), item["support_index"][1:].tolist()
            # the source is the typical frame of the part before the tail, never a support frame
            assert src == typical_frame(lms, 0, head) and src not in support
            assert max(support) < head and item["query_index"].min() >= head and item["query_index"].max() < n
            if dataset is dm.val_set:  # no augmentation: the source's own landmarks
                assert torch.equal(item["source_landmarks"], torch.from_numpy(lms[src].astype(np.float32)))
    with pytest.raises(UserError, match="query_tail"):
        VoxCeleb2DataModule(str(shards), mode="episodes", query_tail=1.0)


def test_episodes_typical_source_drive_other_frames_from_the_clips_typical_frame(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=0,
                             support=3, query=2, cross_clip=False, source_frame="typical")
    dm.setup("fit")
    clips = StreamingDataset(str(shards / dm.train_split))
    by_key = {clips[i]["key"]: clips[i]["landmarks"] for i in range(len(clips))}
    for i in range(len(dm.train_set)):
        item = dm.train_set[i]
        lms = by_key[item["support_key"]]
        frames = [*item["support_index"].tolist(), *item["query_index"].tolist()]  # [source, support..., query...]
        assert frames[0] == typical_frame(lms, 0, len(lms))  # the whole clip's typical frame
        assert len(set(frames)) == 6, frames  # support and query: other frames, none used twice
    with pytest.raises(UserError, match="source_frame"):
        VoxCeleb2DataModule(str(shards), mode="episodes", source_frame="first")


def test_windows_mode_and_end_padding(shards):
    dm = VoxCeleb2DataModule(str(shards), mode="windows", resolution=64, batch_size=2, num_workers=0, window=4)
    dm.setup("fit")
    b = _batch(dm, dm.train_dataloader())
    assert b["lq"].shape == (2, 4, 3, 64, 64) and b["hq"].shape == (2, 4, 3, 128, 128)
    # consecutive frames: neighbours differ little, the hq frame is the lq frame at twice the size
    assert (b["lq"][:, 1:] - b["lq"][:, :-1]).abs().mean() < 0.05
    down = torch.nn.functional.avg_pool2d(b["hq"].flatten(0, 1), 2)
    assert (down - b["lq"].flatten(0, 1)).abs().mean() < 0.03
    item = StreamingDataset(str(shards / "dev"))[0]
    n = len(item["landmarks"])
    w = make_window(item, SampleSpec("windows", 64, window=4), n - 2)
    assert w["valid"].tolist() == [True, True, False, False]
    assert torch.equal(w["lq"][1], w["lq"][3])  # the clip end is repeated, not dropped
    # an x4 SR model (the demo preset's) gets high-resolution frames at 4x the input size
    w4 = make_window(item, SampleSpec("windows", 32, window=2, sr_scale=4), 0)
    assert w4["lq"].shape == (2, 3, 32, 32) and w4["hq"].shape == (2, 3, 128, 128)
    hq, lq = w4["hq"].float() / 255, w4["lq"].float() / 255  # uint8 until the batch reaches the device
    assert (torch.nn.functional.avg_pool2d(hq, 4) - lq).abs().mean() < 0.03


def test_id_dim_mismatch_names_both(shards):
    with pytest.raises(UserError, match=r"id_dim=512.*128"):
        VoxCeleb2DataModule(str(shards), id_dim=512)
    with pytest.raises(UserError, match="manifest"):
        VoxCeleb2DataModule(str(shards / "dev"))


def _real_frame(shards):
    item = StreamingDataset(str(shards / "test"))[0]
    return decode_frames(item, [5]), item["landmarks"][[5]].astype(np.float32)


def _mediapipe(frame):
    with FaceMesh(static=True) as mesh:
        return mesh(frame)[0]


def test_flip_swaps_left_and_right(shards):
    frames, lms = _real_frame(shards)
    flipped, flm = hflip(frames, lms)
    ref = _mediapipe(flipped[0])
    err = np.abs(ref[:, :2] - flm[0, :, :2]).mean()
    naive = lms[0].copy()
    naive[:, 0] = 1 - naive[:, 0]  # mirrored coordinates without swapping the indices
    assert err < 0.01 and np.abs(ref[:, :2] - naive[:, :2]).mean() > 3 * err
    # MediaPipe labels a mirrored face by appearance: each iris index stays on its side of the image
    assert (flm[0, 468, 0] < flm[0, 473, 0]) == (lms[0, 468, 0] < lms[0, 473, 0])


def test_augmentation_keeps_landmarks_on_the_face(shards):
    frames, lms = _real_frame(shards)
    aug = ClipAugment(flip_p=1.0, affine_p=1.0, colour_p=1.0)
    out, out_lm = aug(np.repeat(frames, 2, 0), np.repeat(lms, 2, 0), np.random.default_rng(3))
    assert np.array_equal(out[0], out[1]) and np.allclose(out_lm[0], out_lm[1])  # same for every frame
    assert not np.array_equal(out[0], frames[0])
    ref = _mediapipe(out[0])
    assert np.abs(ref[:, :2] - out_lm[0, :, :2]).mean() < 0.012


@pytest.mark.parametrize("module", ["voxceleb2", "personal"])
def test_augmented_batches_repeat_with_the_seed(shards, module):
    """Every draw, albumentations' included, comes from the sample's generator: a seed gives the same augmented
    batches in every run, so the adaptation curves' starts are fine-tuned on the same batches."""
    def batches(augment: bool) -> list[dict]:
        torch.manual_seed(0)
        if module == "personal":
            dm = PersonalVideoDataModule(str(shards), resolution=64, batch_size=4, samples_per_epoch=8, seed=3,
                                         augment=augment)
        else:
            dm = VoxCeleb2DataModule(str(shards), mode="pairs", resolution=64, batch_size=4, num_workers=0, seed=3,
                                     samples_per_clip=2, augment=augment)
            dm.setup("fit")
        return [b for _, b in zip(range(2), dm.train_dataloader())]

    first, again, plain = batches(True), batches(True), batches(False)
    for a, b, p in zip(first, again, plain):
        assert a["key"] == b["key"] == p["key"]
        for key in ("frames", "source", "driving", "source_landmarks", "driving_landmarks"):
            assert torch.equal(a[key], b[key]), key
    # and augmentation did change some of those frames (compared where the unaugmented run drew the same pair)
    same = [(a["driving"][i], p["driving"][i]) for a, p in zip(first, plain) for i in range(len(a["key"]))
            if torch.equal(a["frames"][i], p["frames"][i])]
    assert same and any(not torch.equal(x, y) for x, y in same)


def test_episodes_are_new_every_epoch_and_the_same_with_any_number_of_workers(shards):
    """Each epoch draws a new episode of every person (its clip, frames and augmentation), a function of the seed
    and the epoch only: in the main process (num_workers=0, the tiny preset) the same episodes came back every
    epoch, and with workers they depended on the workers' seeds."""
    def epochs(num_workers: int) -> list[dict]:
        dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=num_workers,
                                 support=3, query=2, seed=5)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [{ident: (b["support"][i], b["query_index"][i]) for b in loader for i, ident in enumerate(b["identity"])}
                for _ in range(2)]

    main, workers = epochs(0), epochs(2)
    for a, b in zip(main, workers):  # the same episodes, whoever loads them
        assert a.keys() == b.keys() and len(a) >= 4
        assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    first, second = main
    shared = first.keys() & second.keys()
    assert shared and all(not torch.equal(first[k][0], second[k][0]) for k in shared)  # new frames every epoch


def test_a_pool_of_episodes_per_person_cycles(shards):
    """meta.episodes_per_person=K: epoch e shows each person's episode e mod K, drawn once from the seed."""
    dm = VoxCeleb2DataModule(str(shards), mode="episodes", resolution=64, batch_size=2, num_workers=0,
                             support=3, query=2, seed=5, episodes_per_person=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    e0, e1, e2 = ({ident: b["support"][i] for b in loader for i, ident in enumerate(b["identity"])}
                  for _ in range(3))
    assert e0.keys() == e1.keys() == e2.keys() and len(e0) >= 4
    assert all(torch.equal(e0[k], e2[k]) for k in e0)  # the pool cycles
    assert all(not torch.equal(e0[k], e1[k]) for k in e0)  # and holds two different episodes
    with pytest.raises(UserError, match="episodes_per_person"):
        VoxCeleb2DataModule(str(shards), mode="episodes", episodes_per_person=0)


def test_rendering_follows_the_landmarks(shards):
    _, lms = _real_frame(shards)
    lm = torch.from_numpy(lms)
    img = LandmarkRenderer()(lm, 128)
    assert img.shape == (1, 3, 128, 128) and 0 <= img.min() and img.max() <= 1
    lit = img[0].amax(0) > 0.2
    ys, xs = torch.nonzero(lit, as_tuple=True)
    pts = lm[0, :468, :2] * 128
    # every lit pixel lies on the face, and the face's outline is drawn
    assert xs.min() >= pts[:, 0].min() - 2 and xs.max() <= pts[:, 0].max() + 2
    assert ys.min() >= pts[:, 1].min() - 2 and ys.max() <= pts[:, 1].max() + 2
    chin = (lm[0, 152, :2] * 128 - 0.5).round().long()
    assert img[0, :, chin[1] - 1 : chin[1] + 2, chin[0] - 1 : chin[0] + 2].amax() > 0.3
    gaze = gaze_heatmaps(lm, 128)
    for ch, iris in ((0, 468), (1, 473)):
        peak = torch.nonzero(gaze[0, ch] == gaze[0, ch].max())[0].flip(0).float()
        assert (peak + 0.5 - lm[0, iris, :2] * 128).norm() < 1.5
    eyes, mouth = region_masks(lm, 128)
    at = lambda m, i: m[0, 0, int(lm[0, i, 1] * 128), int(lm[0, i, 0] * 128)]
    assert at(eyes, 468) > 0.5 and at(eyes, 473) > 0.5 and at(eyes, 1) < 0.5
    assert at(mouth, 13) > 0.5 and at(mouth, 10) < 0.5 and at(mouth, 468) < 0.5


def test_personal_video_holds_out_the_tail(shards):
    dm = PersonalVideoDataModule(str(shards), resolution=64, batch_size=4, heldout_fraction=0.25,
                                 samples_per_epoch=8)
    dm.setup()
    for (lo, hi), (vlo, vhi) in zip(dm.train_ranges, dm.val_ranges):
        assert lo == 0 and hi == vlo and vhi > vlo
    b = _batch(dm, dm.train_dataloader())
    assert b["source"].shape == (4, 3, 64, 64) and b["driving_lmk_img"].shape == (4, 3, 64, 64)
    for key, (s, d) in zip(b["key"], b["frames"].tolist()):
        hi = dm.train_ranges[[it["key"] for it in dm.items].index(key)][1]
        assert s < hi and d < hi  # training never sees held-out frames
    v = next(iter(dm.val_dataloader()))
    c = [it["key"] for it in dm.items].index(v["key"][0])
    lo = dm.val_ranges[c][0]
    # held-out frames are driven from the clip's typical training frame, never from the held-out tail
    assert (v["frames"][:, 0] == dm.sources[c]).all() and dm.sources[c] < lo and (v["frames"][:, 1] >= lo).all()
    assert dm.sources[c] == typical_frame(dm.items[c]["landmarks"], 0, lo)
    first = PersonalVideoDataModule(str(shards), resolution=64, batch_size=4, heldout_fraction=0.25,
                                    source_frame="first")
    assert (next(iter(first.val_dataloader()))["frames"][:, 0] == 0).all()
    with pytest.raises(UserError, match="too few"):
        PersonalVideoDataModule(str(shards), heldout_fraction=0.9).setup()
    with pytest.raises(UserError, match="source_frame"):
        PersonalVideoDataModule(str(shards), source_frame="middle")


def test_typical_frame_is_the_one_nearest_the_median_landmarks():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, (478, 3))
    lm = base + rng.normal(0, 0.01, (12, 478, 3))
    lm[5] = base + rng.normal(0, 0.001, (478, 3))  # the least unusual frame
    lm[0, :, :2] += 0.1  # the clip opens with the face elsewhere in the crop
    assert typical_frame(lm, 0, 12) == 5
    assert typical_frame(lm, 0, 5) != 0 and typical_frame(lm, 6, 12) in range(6, 12)
