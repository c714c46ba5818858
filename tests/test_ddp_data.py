"""Under 2-process CPU DDP (gloo) the ranks receive disjoint samples that together cover the epoch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_a_resumed_ddp_run_sees_the_episodes_of_an_uninterrupted_one(shards, tmp_path):
    """Resumed from the last step of its second epoch, a 2-process run's third epoch gives every rank the people,
    in the same order and with the same frames, that a run never stopped gives it."""
    def run(name: str, epochs: int, resume: Path | None = None) -> list[dict]:
        out = tmp_path / name
        out.mkdir(exist_ok=True)
        r = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "ddp_episode_order.py"), str(shards),
                            str(out), str(epochs), *([str(resume)] if resume else [])],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]

    whole = run("whole", 3)
    run("stopped", 2)
    resumed = run("stopped", 3, resume=tmp_path / "stopped" / "last.ckpt")
    for rank in range(2):
        assert list(whole[rank]) == ["0", "1", "2"] and list(resumed[rank]) == ["2"]
        assert len(whole[rank]["2"]) == 5  # 10 people, 2 ranks, batches of 1
        assert resumed[rank]["2"] == whole[rank]["2"]
    assert whole[0]["0"] != whole[0]["1"]  # and the epochs differ
