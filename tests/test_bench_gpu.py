"""benchmarks.bench_gpu (make bench-gpu) at test size on the CPU: every part runs and reports rates."""
from __future__ import annotations

from benchmarks import bench_gpu


def test_bench_gpu_runs_every_part_at_test_size(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "RESULTS", tmp_path)
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)  # save() writes here
    r = bench_gpu.main(["--device", "cpu", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--frames", "8",
                        "--personalize-steps", "2", "--personalize-seconds", "2", "--shards", str(shards)])
    assert r["train_warp"]["samples_per_s"] > 0 and r["train_refine"]["samples_per_s"] > 0
    assert r["train_refine"]["resolution"] == 64 and r["train_warp"]["precision"] == "32-true"
    assert r["loader_pairs"]["samples_per_s"] > 0
    assert r["inference"]["64_fp32"]["frames_per_s"] > 0 and r["inference"]["128_with_sr_fp32"]["frames_per_s"] > 0
    assert r["personalize_2s_video"]["steps"] == 2 and r["personalize_2s_video"]["wall_s"] > 0
    assert (tmp_path / "gpu_cpu.json").is_file()
