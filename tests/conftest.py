"""Shared test fixtures: paths to the real fixtures beside the repository, and a small sample dataset."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quiet MediaPipe/TFLite and keep wandb off the network in every test process (children inherit).
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

# Under pytest-xdist (`make test` runs `-n auto`), each worker gets an equal share of the cores for torch's
# intra-op threads; oversubscribed OpenMP threads spin against each other and run slower than fewer threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
    _share = max(1, _cores // _WORKERS)
    torch.set_num_threads(_share)
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))  # the processes a test starts (the app server, DDP ranks)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES} (they live beside the repository in ../shared/fixtures)")
    return FIXTURES


@pytest.fixture(scope="session")
def small_sample_settings():
    from src.sample_dataset import Settings

    # 6 identities x 1 clip of ~1 s at 256 px: the real generator, just less of it.
    return Settings(seed=7, size=256, videos_per_identity=1, clips_per_video=1, min_seconds=1.0,
                    max_seconds=1.2, max_identities=6, test_identities=1)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory, small_sample_settings) -> Path:
    from src.sample_dataset import build

    root = tmp_path_factory.mktemp("sample")
    build(root, small_sample_settings, workers=2, quiet=True)
    return root


def _faceless_video(path: Path) -> None:
    """A 2 s clip of moving colour gradients: decodable, no face."""
    import numpy as np

    from src.video_io import write_video

    yy, xx = np.mgrid[0:240, 0:320]
    frames = [np.stack([(xx + 4 * t) % 256, (yy + 2 * t) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
              for t in range(50)]
    write_video(path, frames, fps=25)


@pytest.fixture(scope="session")
def preprocess_input(tmp_path_factory, fixtures_dir) -> Path:
    """The real voxceleb2_mini clips plus bad files: corrupt, zero-length, truncated, face-less."""
    import shutil

    root = tmp_path_factory.mktemp("vox_input")
    shutil.copytree(fixtures_dir / "voxceleb2_mini", root, dirs_exist_ok=True)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    bad = root / "dev" / "mp4"
    (bad / "id99991" / "corrupt").mkdir(parents=True)
    (bad / "id99991" / "corrupt" / "00001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    (bad / "id99992" / "empty").mkdir(parents=True)
    (bad / "id99992" / "empty" / "00001.mp4").write_bytes(b"")
    real = sorted((fixtures_dir / "voxceleb2_mini" / "dev" / "mp4").glob("*/*/*.mp4"))[0].read_bytes()
    (bad / "id99993" / "truncated").mkdir(parents=True)
    (bad / "id99993" / "truncated" / "00001.mp4").write_bytes(real[: len(real) // 3])
    (bad / "id99994" / "noface").mkdir(parents=True)
    _faceless_video(bad / "id99994" / "noface" / "00001.mp4")
    return root


PREPROCESS_ARGS = ["--max-frames-per-clip", "30", "--workers", "2", "--quiet"]


@pytest.fixture(scope="session")
def shards(tmp_path_factory, preprocess_input) -> Path:
    """Shards preprocessed from `preprocess_input` (30 frames per clip, to stay fast)."""
    from src.preprocess import run

    out = tmp_path_factory.mktemp("shards")
    run(["--input", str(preprocess_input), "--output", str(out), *PREPROCESS_ARGS])
    return out


@pytest.fixture(scope="session")
def tiny_generator_ckpt(tmp_path_factory) -> Path:
    """A refine-stage checkpoint of a randomly initialised `tiny` generator (64 px, 128-D dlib identity):
    the format every generator consumer reads, at test speed."""
    from benchmarks.common import untrained_generator

    return untrained_generator(tmp_path_factory.mktemp("base") / "refine.ckpt", ["model=tiny"])


@pytest.fixture(scope="session")
def demo_generator_ckpt(tmp_path_factory) -> Path:
    """An untrained `demo`-size generator (128 px, mesh prior, seed 0): large enough for blinks and mouths to
    show in the pixels, which the tiny 64 px one cannot render."""
    from benchmarks.common import untrained_generator

    return untrained_generator(tmp_path_factory.mktemp("demo") / "demo.ckpt", ["model=demo"])
