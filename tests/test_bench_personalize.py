"""The adaptation-curve benchmark: how the goal's step counts are read off the curves, and a real run."""
from __future__ import annotations

import json

import numpy as np

from benchmarks import bench_personalize as bp


def test_summarise_reads_the_step_counts_off_the_mean_curves():
    steps = [0, 1, 2, 5, 10, 25, 50, 100]
    mean = {"stage1": np.array([10, 9.8, 9.6, 9.4, 9.2, 9.0, 8.8, 8.5]),
            "meta": np.array([10, 9.0, 8.7, 8.4, 8.3, 8.2, 8.1, 8.0]),
            "control": np.array([9.5, 9.4, 9.3, 9.0, 8.9, 8.6, 8.5, 8.4])}
    s = bp.summarise(steps, mean, 100)
    assert s["stage1_loss_at_budget"] == 8.5
    assert s["meta_steps_to_reach_it"] == 5 and s["ratio"] == 0.05  # 8.4 <= 8.5 first at step 5
    assert s["stage1_steps_to_reach_it"] == 100 and s["meta_faster_than_stage1"]
    assert s["control_steps_to_reach_it"] == 50 and s["meta_faster_than_control"]
    assert s["loss_at_steps"][25] == {"stage1": 9.0, "meta": 8.2, "control": 8.6}
    # a meta start that never gets there: no ratio, and it is not called faster
    slow = bp.summarise(steps, {"stage1": mean["stage1"], "meta": np.full(8, 9.0)}, 100)
    assert slow["ratio"] is None and slow["meta_steps_to_reach_it"] == "not within 100"
    assert not slow["meta_faster_than_stage1"] and "control_steps_to_reach_it" not in slow


def test_curves_run_on_real_shards(shards, tiny_generator_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(bp, "save", lambda name, r: (tmp_path / f"{name}.json").write_text(json.dumps(r)))
    bp.main(["--meta", str(tiny_generator_ckpt), "--stage1", str(tiny_generator_ckpt), "--control",
             str(tiny_generator_ckpt),
             "--shards", str(shards), "--steps", "4", "--fine-until", "2", "--eval-every", "2", "--seeds", "2"])
    r = json.loads((tmp_path / "personalize_curves.json").read_text())
    assert r["curve_steps"] == [0, 1, 2, 4] and r["seeds"] == 2
    for name in ("stage1", "meta", "control"):
        assert len(r[f"{name}_curve"]) == 4 and all(np.isfinite(r[f"{name}_curve"]))
    # one checkpoint as all three starts, fine-tuned on the same batches (augmentations included): the same curve
    assert r["stage1_curve"] == r["meta_curve"] == r["control_curve"]
    assert r["stage1_curve"][-1] != r["stage1_curve"][0]
    test_ids = json.loads((shards / "manifest.json").read_text())["splits"]["test"]["identities"]
    assert set(r["per_identity"]) == set(test_ids)
