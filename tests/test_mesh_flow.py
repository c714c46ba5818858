"""The dense-mesh warping flow (src/faces/mesh_flow.py) and the generator built on it (model.warp.mesh_prior)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from benchmarks.common import psnr_u8
from data_modules.shards import decode_frames
from src.checkpoints import save_checkpoint
from src.config import compose
from src.errors import UserError
from src.evaluation import Landmarker, piecewise_affine
from src.faces.mesh_flow import MeshFlow
from src.metrics.face import akd
from src.models.generator import build_generator
from src.models.warping import warp


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def _to_images(t: torch.Tensor) -> np.ndarray:
    return t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def real_pairs(shards):
    """(item, source frame index 0, driving indices) for every test-split clip of the real fixture shards."""
    ds = StreamingDataset(str(shards / "test"))
    return [ds[i] for i in range(len(ds))]


def test_identical_landmarks_give_the_exact_identity(real_pairs):
    lm = torch.from_numpy(real_pairs[0]["landmarks"][:4].astype(np.float32))
    flow, covered = MeshFlow()(lm, lm, 32)
    assert flow.shape == (4, 2, 32, 32) and covered.shape == (4, 1, 32, 32)
    assert flow.abs().max() == 0
    assert 0.05 < covered.mean() < 0.9  # the face covers part of the crop
    image = torch.rand(4, 3, 64, 64)
    assert torch.allclose(warp(image, flow), image, atol=1e-5)  # grid_sample on the identity grid


def test_translation_is_reproduced_inside_and_fades_to_the_border(real_pairs):
    lm = torch.from_numpy(real_pairs[0]["landmarks"][:1].astype(np.float32))
    moved = lm.clone()
    moved[..., 0] += 0.05  # the driving face is 5 % of the width to the right
    flow, covered = MeshFlow()(lm, moved, 64)
    inside = covered[0, 0] > 0
    # backward flow: a driving pixel comes from 0.05 (0.1 in normalised units) to its left
    assert torch.allclose(flow[0, 0][inside], torch.full_like(flow[0, 0][inside], -0.1), atol=1e-4)
    assert flow[0, 1][inside].abs().max() < 1e-4
    # outside the face the displacement continues smoothly, falling to nearly 0 at the frame's edge
    assert flow[0, 0, :, 0].abs().max() < 0.02 and flow[0, 0, 0, :].abs().max() < 0.05
    step = (flow[0, 0, :, 1:] - flow[0, 0, :, :-1]).abs().max()
    assert step < 0.02  # no seam at the face's outline


def test_mesh_flow_alone_matches_the_piecewise_affine_baseline_on_real_frames(real_pairs):
    """Inside the face both are the same piecewise-affine map: PSNR within 0.3 dB there. Over the whole frame the
    mesh flow may only be better: it has no seam at the face's outline and moves hair and neck with the head,
    where the baseline leaves them still."""
    r, mesh = 128, MeshFlow()
    face_gap, frame_gap = [], []
    for item in real_pairs:
        idx = list(range(1, min(len(item["landmarks"]), 25), 2))
        src, drv = decode_frames(item, [0], size=r)[0], decode_frames(item, idx, size=r)
        lm = torch.from_numpy(item["landmarks"].astype(np.float32))
        baseline = piecewise_affine(src, lm[0].numpy(), lm[idx].numpy())
        flow, _ = mesh(lm[:1].expand(len(idx), -1, -1), lm[idx], r // 4)  # the demo's flow resolution
        ours = _to_images(warp(_to_tensor(src[None]).expand(len(idx), -1, -1, -1), flow))
        _, face = mesh(lm[idx], lm[idx], r)  # the driving face's pixels at full resolution
        for k in range(len(idx)):
            # the face 4 px in from its outline: the baseline's seam (its displacement falls to 0 just outside
            # the face and is upsampled across the outline) is where the two differ most
            m = cv2.erode(face[k, 0].numpy().astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            face_gap.append(psnr_u8(ours[k][m], drv[k][m]) - psnr_u8(baseline[k][m], drv[k][m]))
            frame_gap.append(psnr_u8(ours[k], drv[k]) - psnr_u8(baseline[k], drv[k]))
    assert len(face_gap) >= 20
    # measured here (the fixtures' test clips, 30 frames each, 128 px): +0.19 dB inside, +0.36 dB on the frame
    assert abs(float(np.mean(face_gap))) < 0.3
    assert float(np.mean(frame_gap)) > -0.3


def test_degenerate_and_out_of_frame_landmarks_stay_finite_and_bounded(real_pairs):
    lm = torch.from_numpy(real_pairs[0]["landmarks"][:1].astype(np.float32))
    folded = lm.clone()
    folded[0, :, :2] = folded[0].flip(0)[:, :2]  # every point swapped with another: the mesh folds everywhere
    collapsed = torch.full_like(lm, 0.5)  # every triangle of zero area
    outside = lm.clone()
    outside[..., 0] += 3.0  # the whole face far right of the frame
    huge = lm.clone()
    huge[..., :2] = (huge[..., :2] - 0.5) * 1e6  # triangles spanning the frame many times over
    nan = lm.clone()
    nan[0, 10, 0] = float("nan")
    src = torch.cat([lm] * 5)
    drv = torch.cat([folded, collapsed, outside, huge, nan])
    flow, covered = MeshFlow()(src, drv, 32)
    assert torch.isfinite(flow).all()
    assert flow.abs().max() <= 8.0  # landmarks are clamped to [-3, 3] normalised: bounded displacement
    assert flow[4].abs().max() == 0 and covered[4].sum() == 0  # a frame with NaN: identity, nothing covered
    assert covered[2].sum() == 0  # no triangle in the frame
    assert torch.isfinite(MeshFlow()(drv, src, 32)[0]).all()  # and the same landmarks as the source


def _tiny_batch(item, r: int, idx: list[int], id_dim: int) -> dict:
    from data_modules.guidance import render_guidance
    from src.faces.render import LandmarkRenderer

    frames = _to_tensor(decode_frames(item, [0] + idx, size=r)) / 255
    lms = torch.from_numpy(item["landmarks"][[0] + idx].astype(np.float32))
    n = len(idx)
    batch = {"source": frames[:1].expand(n, -1, -1, -1), "driving": frames[1:],
             "source_landmarks": lms[:1].expand(n, -1, -1), "driving_landmarks": lms[1:],
             "embedding": torch.from_numpy(item["embedding"].copy())[None].expand(n, -1)[:, :id_dim]}
    return render_guidance(batch, LandmarkRenderer(), r)


def test_gradients_reach_the_residual_flow_head(real_pairs):
    from src.modules.common import generator_inputs

    torch.manual_seed(0)
    cfg = compose("refine", ["model=tiny"])
    item = real_pairs[0]
    batch = _tiny_batch(item, 64, [5, 10], len(item["embedding"]))
    gen = build_generator(cfg.model, len(item["embedding"]))
    out = gen(**generator_inputs(batch))
    assert "mesh_flow" in out and torch.equal(out["flow"], out["mesh_flow"])  # zero residual at initialisation
    (out["warped"] - batch["driving"]).abs().mean().backward()
    grad = gen.warper.flow_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_an_untrained_generator_with_the_prior_moves_the_face(real_pairs):
    """MediaPipe on the untrained generator's output follows the driving landmarks as the mesh warp does."""
    from src.modules.common import generator_inputs

    torch.manual_seed(0)
    r = 128
    cfg = compose("refine", ["model=demo"])
    landmarker = Landmarker()
    ours, mesh_warp, copy = [], [], []
    for item in real_pairs[:2]:
        idx = list(range(4, min(len(item["landmarks"]), 60), 8))
        batch = _tiny_batch(item, r, idx, len(item["embedding"]))
        gen = build_generator(cfg.model, len(item["embedding"])).eval()
        with torch.no_grad():
            out = gen(**generator_inputs(batch))
            flow, _ = MeshFlow()(batch["source_landmarks"], batch["driving_landmarks"], gen.warper.flow_res)
            classical = warp(batch["source"], flow)
        for k, target in enumerate(batch["driving_landmarks"].numpy()):
            for frames, scores in ((out["output"], ours), (classical, mesh_warp), (batch["source"], copy)):
                found = landmarker(_to_images(frames[k : k + 1] * 255)[0])
                assert found is not None
                scores.append(akd(found, target, r))
    assert np.mean(ours) <= 1.2 * np.mean(mesh_warp)
    assert np.mean(ours) < 0.8 * np.mean(copy)  # and it moves: copying the source is far off


# The output of the tiny learned-only generator (torch.manual_seed(0), the inputs of _reference_inputs) computed by
# the code before the mesh prior existed (commit a5239d5): a checkpoint of that time must still give it.
OLD_OUTPUT_SUM = 13119.068359375
OLD_PIXELS = ([0.4947778284549713, 0.5448331832885742, 0.5561518669128418],
              [0.7217711210250854, 0.6153524518013, 0.33360910415649414])


def _reference_inputs():
    g = torch.Generator().manual_seed(0)
    r = 64
    return dict(source=torch.rand(2, 3, r, r, generator=g), source_lmk=torch.rand(2, 3, r, r, generator=g),
                driving_lmk=torch.rand(2, 3, r, r, generator=g), identity=torch.randn(2, 128, generator=g),
                gaze=torch.rand(2, 2, r, r, generator=g), mouth_mask=torch.rand(2, 1, r, r, generator=g))


def test_a_checkpoint_from_before_the_prior_loads_and_gives_the_same_output(tmp_path):
    from omegaconf import OmegaConf

    from src.checkpoints import load_generator

    cfg = compose("refine", ["model=tiny", "model.warp.mesh_prior=false", "model.refiner.blend_warped=false"])
    torch.manual_seed(0)
    gen = build_generator(cfg.model, 128)
    old_cfg = OmegaConf.to_container(cfg, resolve=True)
    del old_cfg["model"]["warp"]["mesh_prior"]  # the key did not exist then
    path = tmp_path / "old.ckpt"
    save_checkpoint({"state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                "hyper_parameters": {"cfg": old_cfg, "id_dim": 128}}, path)
    loaded, loaded_cfg, _ = load_generator(path)
    assert not loaded.mesh_prior and loaded_cfg["model"]["warp"]["mesh_prior"] is False
    with torch.no_grad():
        out = loaded.eval()(**_reference_inputs())["output"]
    assert out.sum().item() == pytest.approx(OLD_OUTPUT_SUM, rel=1e-5)
    assert torch.allclose(out[0, :, 10, 10], torch.tensor(OLD_PIXELS[0]), atol=1e-5)
    assert torch.allclose(out[1, :, 40, 50], torch.tensor(OLD_PIXELS[1]), atol=1e-5)
    # forcing the prior on for it is an error, not a silent mix
    with pytest.raises(UserError, match="without the mesh prior"):
        load_generator(path, mesh_prior=True)


def test_a_warm_start_must_match_the_checkpoints_prior(tmp_path):
    from omegaconf import OmegaConf

    from src.checkpoints import load_weights
    from src.modules.refiner_module import RefinerModule

    old = compose("refine", ["model=tiny", "model.warp.mesh_prior=false"])
    module = RefinerModule(OmegaConf.to_container(old, resolve=True), 128)
    path = tmp_path / "old.ckpt"
    cfg = OmegaConf.to_container(old, resolve=True)
    del cfg["model"]["warp"]["mesh_prior"]
    save_checkpoint({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": cfg, "id_dim": 128}}, path)
    new = RefinerModule(OmegaConf.to_container(compose("refine", ["model=tiny"]), resolve=True), 128)
    with pytest.raises(UserError, match="mesh_prior=false"):
        load_weights(new, path, "generator.", "generator.")
    assert load_weights(module, path, "generator.", "generator.") > 0


def test_the_prior_needs_the_blended_refiner():
    from src.errors import ConfigError

    with pytest.raises(ConfigError, match="blend_warped"):
        compose("refine", ["model.refiner.blend_warped=false"])
