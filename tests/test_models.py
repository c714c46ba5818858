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
from src.modules.common import generator_inputs


def _inputs(b: int, r: int, id_dim: int):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g)
    # random landmarks: a badly folded mesh, which the prior must handle too
    return dict(source=rand(b, 3, r, r), source_lmk=rand(b, 3, r, r), driving_lmk=rand(b, 3, r, r),
                identity=torch.randn(b, id_dim, generator=g), gaze=rand(b, 2, r, r), mouth_mask=rand(b, 1, r, r),
                source_points=rand(b, 478, 3), driving_points=rand(b, 478, 3))


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


@pytest.mark.parametrize("mesh_prior", [True, False])
def test_identical_pair_warps_by_identity_at_init(mesh_prior):
    cfg = compose("refine", ["model=demo", f"model.warp.mesh_prior={str(mesh_prior).lower()}"])
    gen = build_generator(cfg.model, 128)
    x = _inputs(2, 128, 128)
    with torch.no_grad():
        out = gen.warper(x["source"], x["source_lmk"], x["source_lmk"], x["source_points"], x["source_points"])
    assert out["flow"].abs().max() == 0
    assert torch.allclose(out["warped"], x["source"], atol=1e-5)


@pytest.mark.parametrize("mesh_prior,lr", [(False, 1e-3), (True, 2e-4)])
def test_five_steps_lower_the_loss_on_real_frames(shards, mesh_prior, lr):
    """From the learned-only start (an identity warp) and from the mesh prior, which starts much closer: there a
    few steps at the training rate (warp tensors at optim.warp_lr_mult of it) still lower the loss."""
    torch.manual_seed(0)
    cfg = compose("refine", ["model=tiny", f"model.warp.mesh_prior={str(mesh_prior).lower()}"])
    dm = VoxCeleb2DataModule(str(shards), mode="pairs", resolution=64, batch_size=4, num_workers=0, augment=False)
    dm.setup("fit")
    b = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    gen = build_generator(cfg.model, dm.id_dim)
    loss_fn = L1MSSSIMLoss()
    mult = cfg.optim.warp_lr_mult if mesh_prior else 1.0
    opt = torch.optim.Adam([{"params": gen.refiner.parameters()},
                            {"params": gen.warper.parameters(), "lr": lr * mult}], lr=lr, betas=(0.5, 0.999))

    def loss():
        out = gen(**generator_inputs(b))
        return loss_fn(out["output"], b["driving"]) + loss_fn(out["warped"], b["driving"])

    before = loss()
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    opt.step()
    for _ in range(4):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss()
    assert after < before
