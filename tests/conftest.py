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

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES} (they live beside the repository in ../shared/fixtures)")
    return FIXTURES


@pytest.fixture(scope="session")
def small_sample_settings():
    from data_modules.sample import Settings

    # 6 identities x 1 clip of ~1 s at 256 px: the real generator, just less of it.
    return Settings(seed=7, size=256, videos_per_identity=1, clips_per_video=1, min_seconds=1.0,
                    max_seconds=1.2, max_identities=6, test_identities=1)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory, small_sample_settings) -> Path:
    from data_modules.sample import build

    root = tmp_path_factory.mktemp("sample")
    build(root, small_sample_settings, workers=2, quiet=True)
    return root
