"""Under 2-process CPU DDP (gloo) the ranks receive disjoint samples that together cover the epoch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data_modules.shards import load_manifest
from tests.conftest import REPO


def _run(shards, out, mode, workers):
    out.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "ddp_collect_keys.py"), str(shards),
                        str(out), mode, str(workers)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    return [r["seen"] for r in ranks]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_pairs_are_disjoint_and_cover_the_epoch(shards, tmp_path, workers):
    a, b = _run(shards, tmp_path / "run", "pairs", workers)
    clips = {c["key"] for c in load_manifest(shards)["clips"] if c["split"] == "dev"}
    assert len(a) == len(b) == len(clips) // 2  # litdata drops the remainder under DDP: 22 -> 11 + 11
    assert not set(a) & set(b)
    assert set(a) | set(b) == clips and len(set(a)) == len(a)


@pytest.mark.slow
def test_episodes_are_disjoint_by_identity(shards, tmp_path):
    a, b = _run(shards, tmp_path / "run", "episodes", 0)
    identities = set(load_manifest(shards)["splits"]["dev"]["identities"])
    assert not set(a) & set(b)
    assert set(a) | set(b) == identities  # 10 identities -> 5 per rank
