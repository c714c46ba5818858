"""Generator networks: shapes for every preset, parameter counts, identity warp at initialisation, and a
real optimisation step on a batch of real frames."""
from __future__ import annotations

import pytest
import torch

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.config import compose
from src.losses.perceptual import L1MSSSIMLoss
from src.models.blocks import count_parameters
from src.models.generator import build_discriminator, build_generator


def _inputs(b: int, r: int, id_dim: int):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g)
    return dict(source=rand(b, 3, r, r), source_lmk=rand(b, 3, r, r), driving_lmk=rand(b, 3, r, r),
                identity=torch.randn(b, id_dim, generator=g), gaze=rand(b, 2, r, r), mouth_mask=rand(b, 1, r, r))


@pytest.mark.parametrize("preset", ["tiny", "demo", "full"])
def test_forward_shapes_every_preset(preset):
    cfg = compose("refine", [f"model={preset}"])
    r = cfg.model.resolution
    gen, disc = build_generator(cfg.model, 128), build_discriminator(cfg.model)
    with torch.no_grad():
        out = gen(**_inputs(1, r, 128))
        scores, feats = disc(out["output"], torch.rand(1, 3, r, r))
    flow_r = int(r * cfg.model.warp.flow_scale)
    assert out["output"].shape == out["warped"].shape == (1, 3, r, r)
    assert out["flow"].shape == (1, 2, flow_r, flow_r) and out["occlusion"].shape == (1, 1, r, r)
    assert 0 <= out["output"].min() and out["output"].max() <= 1
    assert scores.dim() == 4 and len(feats) == cfg.model.discriminator.num_layers


def test_full_preset_matches_the_paper_size():
    cfg = compose("refine", ["model=full"])
    gen, disc = build_generator(cfg.model, 512), build_discriminator(cfg.model)
    # the paper: ~130 M generator (ladder 10.5 + dense motion 74.8 + encoder 3.4 + SPADE decoder 41.5), 2.8 M D
    assert 125e6 < count_parameters(gen) < 140e6
    assert 70e6 < count_parameters(gen.warper.hourglass) < 80e6
    assert 2.5e6 < count_parameters(disc) < 3.0e6


def test_identical_pair_warps_by_identity_at_init():
    cfg = compose("refine", ["model=demo"])
    gen = build_generator(cfg.model, 128)
    x = _inputs(2, 128, 128)
    with torch.no_grad():
        out = gen.warper(x["source"], x["source_lmk"], x["source_lmk"])
    assert out["flow"].abs().max() == 0
    assert torch.allclose(out["warped"], x["source"], atol=1e-5)


def test_one_step_lowers_the_loss_on_real_frames(shards):
    torch.manual_seed(0)
    cfg = compose("refine", ["model=tiny"])
    dm = VoxCeleb2DataModule(str(shards), mode="pairs", resolution=64, batch_size=4, num_workers=0, augment=False)
    dm.setup("fit")
    b = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    gen = build_generator(cfg.model, dm.id_dim)
    loss_fn = L1MSSSIMLoss()
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def loss():
        out = gen(b["source"], b["source_lmk_img"], b["driving_lmk_img"], b["embedding"], b["driving_gaze"],
                  b["driving_mouth_mask"])
        return loss_fn(out["output"], b["driving"]) + loss_fn(out["warped"], b["driving"])

    before = loss()
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after < before
