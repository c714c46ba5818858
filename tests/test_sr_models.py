"""TemporalSR network, its StyleGAN2 prior loader and the temporal warping error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.checkpoints import load_sr_prior
from src.config import compose
from src.errors import UserError
from src.metrics.temporal import warping_error
from src.models.stylegan2 import StyleGAN2Decoder
from src.models.temporal_sr import build_sr


@pytest.mark.parametrize("preset", ["tiny", "demo", "full"])
def test_shapes_for_every_preset(preset):
    cfg = compose("sr", [f"model={preset}"]).model
    s, k = cfg.sr.out_size, cfg.sr.scale
    if preset == "full":  # 200 M parameters at 512: shapes on the meta device, without the arithmetic
        with torch.device("meta"):
            out = build_sr(cfg)(torch.rand(1, 2, 3, s // k, s // k))
    else:
        out = build_sr(cfg)(torch.rand(2, 3, 3, s // k, s // k))
    assert out.shape[-3:] == (3, s, s) and out.shape[1] == (2 if preset == "full" else 3)
    if preset == "demo":
        assert (s, k) == (512, 4)  # x4 from the 128-px base: the demo ends at 512


def test_x4_model_starts_as_bicubic_x4_and_scale_must_divide_the_output():
    cfg = compose("sr", ["model=tiny", "model.sr.scale=4"]).model
    model = build_sr(cfg).eval()
    assert model.cfg.in_size == 32
    window = torch.rand(1, 2, 3, 32, 32)
    with torch.no_grad():
        out = model(window)
    bicubic = torch.nn.functional.interpolate(window[0], scale_factor=4, mode="bicubic", align_corners=False)
    assert out.shape == (1, 2, 3, 128, 128) and torch.equal(out[0], bicubic)
    with pytest.raises(UserError, match="must be an integer >= 2 that divides model.sr.out_size=128"):
        compose("sr", ["model=tiny", "model.sr.scale=3"])  # refused when the config is composed
    cfg.sr.scale = 3  # and by the network itself, for a config that did not come through compose
    with pytest.raises(UserError, match="must be an integer >= 2 that divides out_size=128"):
        build_sr(cfg)


def test_temporal_fusion_starts_as_the_per_frame_path_and_output_as_bicubic():
    torch.manual_seed(0)
    model = build_sr(compose("sr", ["model=tiny"]).model).eval()
    window = torch.rand(1, 4, 3, 64, 64)
    with torch.no_grad():
        together = model(window)
        alone = torch.cat([model(window[:, t : t + 1]) for t in range(4)], 1)
        bicubic = torch.nn.functional.interpolate(window[0], scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.equal(together, alone)  # zero-initialised mixing: frames do not see each other yet
    assert torch.equal(together[0], bicubic)  # ToRGB heads start at zero: output = bicubic
    # once the mixing weights move, neighbours matter
    with torch.no_grad():
        for mix in model.dec_mix:
            mix.conv2.weight.normal_(0, 0.01)
        for head in model.decoder.to_rgbs:
            head.modulated_conv.weight.normal_(0, 0.1)
        assert not torch.allclose(model(window)[:, 1], model(window[:, 1:2])[:, 0])


def test_prior_loader_maps_every_key_of_the_published_layout(tmp_path):
    torch.manual_seed(0)
    published = StyleGAN2Decoder(128, style_dim=64, num_mlp=2, channel_multiplier=1, narrow=1 / 16)
    # GFPGAN v1.3 layout: {"params_ema": {"stylegan_decoder.<key>": ..., <encoder keys>: ...}}
    state = {f"stylegan_decoder.{k}": v for k, v in published.state_dict().items()}
    state["conv_body_first.weight"] = torch.zeros(1)  # GFPGAN's own encoder: not part of the prior
    torch.save({"params_ema": state}, tmp_path / "GFPGANv1.3.pth")
    model = build_sr(compose("sr", ["model=tiny"]).model)
    n = load_sr_prior(model.decoder, tmp_path / "GFPGANv1.3.pth")
    assert n == len(published.state_dict()) == len(model.decoder.state_dict())
    for k, v in published.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[k], v), k
    # a bare StyleGAN2-clean state dict works too; another width is refused with the shapes named
    torch.save(published.state_dict(), tmp_path / "clean.pth")
    assert load_sr_prior(model.decoder, tmp_path / "clean.pth") == n
    other = StyleGAN2Decoder(128, style_dim=64, num_mlp=2, channel_multiplier=1, narrow=1 / 8)
    torch.save(other.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(UserError, match="shape mismatch"):
        load_sr_prior(model.decoder, tmp_path / "wide.pth")


def test_a_loaded_prior_is_frozen_and_renders_the_whole_image(tmp_path):
    from omegaconf import OmegaConf

    from src.modules.sr_module import TemporalSRModule

    torch.manual_seed(0)
    published = StyleGAN2Decoder(128, style_dim=64, num_mlp=2, channel_multiplier=1, narrow=1 / 16)
    torch.save({"params_ema": {f"stylegan_decoder.{k}": v for k, v in published.state_dict().items()}},
               tmp_path / "prior.pth")
    cfg = OmegaConf.to_container(compose("sr", ["model=tiny", f"sr.prior={tmp_path / 'prior.pth'}"]), resolve=True)
    module = TemporalSRModule(cfg, total_steps=1)
    assert module.hparams.cfg["model"]["sr"]["residual"] is False  # stored, so upscale builds the same network
    assert not any(p.requires_grad for p in module.net.decoder.parameters())
    assert torch.equal(module.net.decoder.to_rgbs[-1].modulated_conv.weight,
                       published.to_rgbs[-1].modulated_conv.weight)
    trainable = [p for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]]
    assert trainable and all(p.requires_grad for p in trainable)


def test_warping_error_sees_flicker_but_not_motion(fixtures_dir):
    from src.video_io import read_frames

    clip = sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    real = np.stack([f[::2, ::2] for f in read_frames(clip)[:12]])  # real head motion
    flicker = real.astype(np.int16)
    flicker[1::2] += 25  # every other frame brighter
    flicker = flicker.clip(0, 255).astype(np.uint8)
    e_real, e_flicker = warping_error(real), warping_error(flicker)
    assert e_real < 0.03 and e_flicker > 2 * e_real
    static = np.repeat(real[:1], 4, axis=0)
    assert warping_error(static) < 1e-6
    with pytest.raises(ValueError):
        warping_error(real[:1])
