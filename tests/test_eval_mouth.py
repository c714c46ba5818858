"""The open-mouth benchmark (benchmarks/eval_mouth.py) on the real fixture shards."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks import eval_mouth
from benchmarks.common import psnr_u8, untrained_generator


def test_scores_open_mouth_frames_and_writes_the_grid(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_mouth, "save", lambda name, r: (tmp_path / f"{name}.json").write_text(json.dumps(r)))
    on = untrained_generator(tmp_path / "on.ckpt", ["model=tiny", "model.warp.mouth_prior=true"])
    off = untrained_generator(tmp_path / "off.ckpt", ["model=tiny"])
    eval_mouth.main(["--checkpoint", f"on={on}", "--checkpoint", f"off={off}", "--data", str(shards),
                     "--grid", str(tmp_path / "grid.png")])
    r = json.loads((tmp_path / "mouth.json").read_text())
    assert int(r["frames_scored"].split()[0]) > 0
    for key in ("mouth_psnr", "frame_psnr"):
        assert set(r[key]) == {"piecewise_affine", "on", "off"} and all(5 < v < 60 for v in r[key].values())
    grid = cv2.imread(str(tmp_path / "grid.png"))
    side = 64  # a 32 px crop about the mouth of each 64 px frame, doubled
    assert grid.shape[1] == 5 * side and grid.shape[0] % (2 * side) == 0  # source, driving, mesh warp, on, off


def test_psnr_weights_the_region():
    target = np.zeros((4, 4, 3), np.uint8)
    output = target.copy()
    output[:2] = 10  # squared error 100 on the top half, none below
    top = np.zeros((4, 4))
    top[:2] = 1
    assert psnr_u8(output, target, top) == pytest.approx(10 * np.log10(255.0**2 / 100))
    assert psnr_u8(output, target) == pytest.approx(10 * np.log10(255.0**2 / 50))
    assert psnr_u8(output, target, 1 - top) == pytest.approx(10 * np.log10(255.0**2 / 1e-9))  # no error there
