"""python -m src.evaluate on shards of the real fixture clips: every metric or an explicit `unavailable`,
both baselines, CSIM of copy-the-source = 1."""
from __future__ import annotations

import json

import numpy as np
import pytest

from src import evaluate
from src.faces.align import umeyama
from src.metrics.face import akd, pose_and_expression

ROW_KEYS = ("psnr", "ssim", "lpips", "fid", "csim", "id_loss", "akd", "aed", "apd", "warp_error", "face_found")


def _run(ckpt, shards, out, *extra) -> int:
    return evaluate.main(["--checkpoint", str(ckpt), "--data", str(shards), "--output", str(out), "--max-frames", "6",
                          "--quiet", *extra])


def test_same_identity_every_metric_both_baselines(tiny_generator_ckpt, shards, tmp_path):
    assert _run(tiny_generator_ckpt, shards, tmp_path / "same") == 0
    result = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert (tmp_path / "same" / "metrics.md").read_text().startswith("# Evaluation: same-identity")
    assert set(result["metrics"]) == {"model", "piecewise_affine", "copy_source", "real_driving"}
    for method in ("model", "piecewise_affine", "copy_source"):
        row = result["metrics"][method]
        assert set(row) == set(ROW_KEYS), method
        for key in ROW_KEYS:  # a number, or the word; never a silent 0 for a metric that could not run
            assert isinstance(row[key], float) or row[key] == "unavailable", (method, key, row[key])
    for key in ("lpips", "fid"):
        if result["metrics"]["model"][key] == "unavailable":
            assert result["unavailable"][key]  # with the reason
    for row in result["metrics"].values():
        if "csim" in row:
            assert row["id_loss"] == pytest.approx(1 - row["csim"], abs=1e-4)  # the paper's ID loss
    # the breakdown per identity: each person's rows, whose frame-weighted mean is the overall row
    people = result["per_identity"]
    assert len(people) >= 2 and all(set(t) == set(result["metrics"]) for t in people.values())
    frames = {p: t["model"]["face_found"] for p, t in people.items()}
    assert all(0 <= f <= 1 for f in frames.values())
    psnrs = [t["piecewise_affine"]["psnr"] for t in people.values()]
    assert min(psnrs) - 1e-3 <= result["metrics"]["piecewise_affine"]["psnr"] <= max(psnrs) + 1e-3
    md = (tmp_path / "same" / "metrics.md").read_text()
    assert "Per identity:" in md and all(f"| {p} | model |" in md for p in people)
    copy, pwa = result["metrics"]["copy_source"], result["metrics"]["piecewise_affine"]
    assert copy["csim"] == pytest.approx(1.0, abs=1e-4)  # the source compared with itself
    assert copy["warp_error"] < 1e-6  # a still picture does not flicker
    assert pwa["akd"] < copy["akd"]  # the warp moves the source's mesh to the driving landmarks
    assert result["metrics"]["real_driving"]["warp_error"] > 0
    assert result["pairs"] == 6 * result["clips"]


def test_cross_identity_has_no_ground_truth_metrics(tiny_generator_ckpt, shards, tmp_path):
    assert _run(tiny_generator_ckpt, shards, tmp_path / "cross", "--mode", "cross-identity") == 0
    result = json.loads((tmp_path / "cross" / "metrics.json").read_text())
    for method in ("model", "piecewise_affine", "copy_source"):
        row = result["metrics"][method]
        assert row["psnr"] == row["ssim"] == row["lpips"] == "unavailable"
        assert isinstance(row["csim"], float) and isinstance(row["apd"], float)
    assert result["metrics"]["copy_source"]["csim"] == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs(tiny_generator_ckpt, shards, tmp_path, capsys):
    assert _run(tiny_generator_ckpt, shards, tmp_path / "x", "--split", "nope") == 2
    assert "--split nope is not in" in capsys.readouterr().err
    assert _run(shards / "manifest.json", shards, tmp_path / "x") == 2
    assert "is not a torch checkpoint" in capsys.readouterr().err
    assert _run(tiny_generator_ckpt, tmp_path / "missing", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()
    capsys.readouterr()
    # the fixture checkpoint warps on the mesh prior: requiring a learned-only one is a clear error
    assert _run(tiny_generator_ckpt, shards, tmp_path / "x", "--mesh-prior", "off") == 2
    assert "trained with the mesh prior" in capsys.readouterr().err


def test_face_metrics_on_known_transforms(shards):
    from litdata import StreamingDataset

    lm = StreamingDataset(str(shards / "test"))[0]["landmarks"][0].astype(np.float64)
    assert akd(lm, lm, 256) == 0
    # a pure head rotation of 10 degrees about the vertical axis: APD 10, AED 0
    c = lm[:, :3].mean(0)
    t = np.radians(10)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    turned = (lm[:, :3] - c) @ rot.T + c
    apd, aed = pose_and_expression(turned, lm)
    assert apd == pytest.approx(10, abs=1e-3) and aed < 1e-6
    # an open mouth (lower-lip points moved down) is expression, not pose
    from src.faces.topology import CHIN, LOWER_LIP_INNER, LOWER_LIP_OUTER

    moved = lm.copy()
    moved[LOWER_LIP_INNER + LOWER_LIP_OUTER + [CHIN], 1] += 0.02
    apd2, aed2 = pose_and_expression(moved, lm)
    assert aed2 > 0.005 and apd2 < 2
    s, r, _ = umeyama(lm[:, :3], turned)
    assert s == pytest.approx(1, abs=1e-6) and np.allclose(r, rot, atol=1e-6)
