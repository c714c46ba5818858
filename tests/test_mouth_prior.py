"""The mouth prior (model.warp.mouth_prior): the occlusion map starts low where the driving mouth opens over source
pixels that are not mouth interior, on real fixture landmarks; old checkpoints keep their behaviour."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from litdata import StreamingDataset

from src.checkpoints import save_checkpoint
from src.config import compose
from src.errors import ConfigError, UserError
from src.faces.mesh_flow import MeshFlow
from src.faces.render import mouth_opening
from src.models.generator import build_generator
from src.models.warping import MOUTH_UNSEEN_LOGIT, prior_inputs


@pytest.fixture(scope="module")
def talking(shards):
    """Landmarks (T, 478, 3) of a real test clip and the indices of its most closed and most open mouth."""
    ds = StreamingDataset(str(shards / "test"))
    best = None
    for i in range(len(ds)):
        lm = torch.from_numpy(ds[i]["landmarks"].astype(np.float32))
        area = mouth_opening(lm, 64).flatten(1).sum(1)
        if best is None or area.max() > best[1][best[3]]:
            best = (lm, area, int(area.argmin()), int(area.argmax()), ds[i])
    return best


def test_the_opening_is_inside_the_lips_and_grows_as_the_mouth_opens(talking):
    lm, area, closed, opened, _ = talking
    assert area[opened] > 10 and area[closed] < 0.5 * area[opened]  # 64 px frame: an open mouth is tens of pixels
    mask = mouth_opening(lm[opened : opened + 1], 64)[0, 0]
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    # inside the mouth corners (61, 291) horizontally
    corners = lm[opened, [61, 291], 0] * 64
    assert corners.min() - 1 <= xs.float().mean() <= corners.max() + 1


def test_unseen_is_the_driving_opening_over_a_closed_source_and_zero_for_the_same_face(talking):
    lm, area, closed, opened, _ = talking
    mesh = MeshFlow()
    moved = prior_inputs(mesh, lm[closed : closed + 1], lm[[opened]], 64, mouth=True)
    unseen = moved["mouth_unseen"]
    assert unseen.shape == (1, 1, 64, 64) and 0 <= unseen.min() and unseen.max() <= 1
    # a closed source has no interior to warp: most of the driving opening is unseen
    assert unseen.sum() > 0.6 * area[opened]
    same = prior_inputs(mesh, lm[opened : opened + 1], lm[[opened]], 64, mouth=True)["mouth_unseen"]
    assert same.abs().max() < 1e-5  # an open source driven by itself shows its own mouth
    assert "mouth_unseen" not in prior_inputs(mesh, lm[:1], lm[1:2], 64, mouth=False)


def test_untrained_generator_synthesises_only_the_unseen_mouth(talking):
    from data_modules.guidance import render_guidance
    from data_modules.shards import decode_frames
    from src.faces.render import LandmarkRenderer
    from src.modules.common import generator_inputs

    lm, _, closed, opened, item = talking
    r = 64
    frames = torch.from_numpy(decode_frames(item, [closed, opened], size=r)).permute(0, 3, 1, 2).float() / 255
    batch = render_guidance({"source": frames[:1], "driving": frames[1:], "source_landmarks": lm[[closed]],
                             "driving_landmarks": lm[[opened]], "embedding": torch.zeros(1, 128)},
                            LandmarkRenderer(), r)
    torch.manual_seed(0)
    with_prior = build_generator(compose("refine", ["model=tiny", "model.warp.mouth_prior=true"]).model, 128).eval()
    torch.manual_seed(0)
    without = build_generator(compose("refine", ["model=tiny", "model.warp.mouth_prior=false"]).model, 128).eval()
    with torch.no_grad():
        a, b = with_prior(**generator_inputs(batch)), without(**generator_inputs(batch))
    unseen = torch.nn.functional.interpolate(a["mouth_unseen"], size=r, mode="bilinear", align_corners=False)
    assert unseen.max() > 0.5 and b["occlusion"].min() > 0.95
    # the occlusion logit drops by MOUTH_UNSEEN_LOGIT times the unseen fraction, and nowhere else
    drop = torch.logit(a["occlusion"].double()) - torch.logit(b["occlusion"].double())
    assert torch.allclose(drop, -MOUTH_UNSEEN_LOGIT * unseen.double(), atol=1e-3)
    assert (a["occlusion"] - b["occlusion"])[unseen > 0.5].max() < -0.2
    assert torch.equal(a["flow"], b["flow"])
    # the same weights: away from the mouth both pass the warped source through (the synthesis, which sees the
    # occlusion map, differs, but carries only its 1 - 0.993 share there); inside, the synthesis is the output
    far = torch.nn.functional.max_pool2d(unseen, 9, stride=1, padding=4)[0, 0] == 0
    assert (a["output"][0][:, far] - b["output"][0][:, far]).abs().max() < 0.02
    near = unseen[0, 0] > 0.5
    assert (a["output"][0][:, near] - a["warped"][0][:, near]).abs().mean() > \
        (b["output"][0][:, near] - b["warped"][0][:, near]).abs().mean() * 5


def test_the_refiner_gets_the_gradient_of_the_unseen_mouth(talking):
    """Without the prior the blend passes ~99 % of the mouth through from the warp and the synthesis learns ~1 % of
    its error there; with it the synthesis gets the mouth's gradient."""
    lm, _, closed, opened, _ = talking
    r = 64
    g = torch.Generator().manual_seed(0)
    x = dict(source=torch.rand(1, 3, r, r, generator=g), source_lmk=torch.rand(1, 3, r, r, generator=g),
             driving_lmk=torch.rand(1, 3, r, r, generator=g), identity=torch.randn(1, 128, generator=g),
             gaze=torch.rand(1, 2, r, r, generator=g), mouth_mask=torch.rand(1, 1, r, r, generator=g),
             source_points=lm[[closed]], driving_points=lm[[opened]])
    norms = {}
    for prior in (True, False):
        torch.manual_seed(0)
        gen = build_generator(compose("refine", ["model=tiny", f"model.warp.mouth_prior={str(prior).lower()}"]).model,
                              128)
        out = gen(**x)
        if prior:
            unseen = torch.nn.functional.interpolate(out["mouth_unseen"], size=r, mode="bilinear",
                                                     align_corners=False).detach()
        (out["output"] * (unseen > 0.5)).sum().backward()
        norms[prior] = sum(float(p.grad.norm()) for p in gen.refiner.to_rgb.parameters())
    assert norms[True] > 10 * norms[False] > 0


def test_the_mouth_prior_needs_the_mesh_prior():
    with pytest.raises(ConfigError, match="mouth_prior"):
        compose("refine", ["model.warp.mesh_prior=false", "model.refiner.blend_warped=false",
                           "model.warp.mouth_prior=true"])


def test_a_checkpoint_from_before_the_mouth_prior_loads_without_it_and_warm_starts_must_match(tmp_path):
    from omegaconf import OmegaConf

    from src.checkpoints import load_generator, load_weights
    from src.modules.refiner_module import RefinerModule

    cfg = compose("refine", ["model=tiny", "model.warp.mouth_prior=false"])  # as every model was before it
    torch.manual_seed(0)
    module = RefinerModule(OmegaConf.to_container(cfg, resolve=True), 128)
    old_cfg = OmegaConf.to_container(cfg, resolve=True)
    del old_cfg["model"]["warp"]["mouth_prior"]  # the key did not exist then
    path = save_checkpoint({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": old_cfg, "id_dim": 128}},
                           tmp_path / "old.ckpt")
    loaded, loaded_cfg, _ = load_generator(path)
    assert loaded_cfg["model"]["warp"]["mouth_prior"] is False and not loaded.warper.cfg.mouth_prior
    g = torch.Generator().manual_seed(1)
    lm = torch.rand(2, 478, 3, generator=g) * 0.5 + 0.25
    x = dict(source=torch.rand(2, 3, 64, 64, generator=g), source_lmk=torch.rand(2, 3, 64, 64, generator=g),
             driving_lmk=torch.rand(2, 3, 64, 64, generator=g), identity=torch.randn(2, 128, generator=g),
             gaze=torch.rand(2, 2, 64, 64, generator=g), mouth_mask=torch.rand(2, 1, 64, 64, generator=g),
             source_points=lm[:1], driving_points=lm[1:].expand(2, -1, -1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**x)["output"], module.generator.eval()(**x)["output"])
    with_prior = RefinerModule(OmegaConf.to_container(compose("refine", ["model=tiny", "model.warp.mouth_prior=true"]),
                                                      resolve=True), 128)
    with pytest.raises(UserError, match="mouth_prior=false"):
        load_weights(with_prior, path, "generator.", "generator.")


def test_a_generator_with_the_mouth_prior_exports_and_matches_torch(tmp_path, talking):
    from benchmarks.common import untrained_generator
    from src import export
    from src.checkpoints import load_generator
    from src.runtime import OnnxGenerator, export_graphs, frame_example

    lm, _, closed, opened, _ = talking
    ckpt = untrained_generator(tmp_path / "g.ckpt", ["model=tiny", "model.warp.mouth_prior=true"])
    generator, _, _ = load_generator(ckpt)
    manifest = export_graphs(generator, tmp_path / "graphs", 2, ckpt)
    onnx = OnnxGenerator(tmp_path / "graphs", ckpt)
    x = frame_example(generator, 2)
    assert manifest["mouth_prior"] is True and "mouth_unseen" in x
    for k in ("mesh_flow", "mouth_unseen"):
        del x[k]  # computed from real landmarks instead, by each runtime itself
    x.update(source_points=lm[[closed]], driving_points=lm[[opened, closed]])
    with torch.no_grad():
        ours = onnx(**x, source_feats=onnx.source_features(x["source"][:1]))["output"]
        theirs = generator.eval()(**x, source_feats=generator.source_features(x["source"][:1]))["output"]
    assert (ours - theirs).abs().max() < export.DEFAULT_TOLERANCE


def test_the_unseen_mouth_is_finite_on_nan_and_out_of_frame_landmarks(talking):
    lm = talking[0][[talking[3]] * 3].clone()  # the open mouth
    lm[1, 5] = float("nan")
    lm[2, :, :2] += 4.0  # far outside the frame
    out = prior_inputs(MeshFlow(), talking[0][:1], lm, 32, mouth=True)
    assert torch.isfinite(out["mouth_unseen"]).all() and torch.isfinite(out["mesh_flow"]).all()
    assert out["mouth_unseen"][1:].abs().max() == 0  # no opening where the landmarks are unusable or outside
