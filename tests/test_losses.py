"""Losses: the VGG19 loader on weights saved in torchvision's key format, its refusal without them, and
the behaviour of each loss."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.losses.gan import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from src.losses.perceptual import (VGG19_FILE, L1MSSSIMLoss, VGGPerceptualLoss, build_perceptual, find_vgg19_weights,
                                   load_vgg19, vgg19_features)
from src.losses.region import region_loss


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG19 saved with torchvision's keys (features.N.*, classifier.*)."""
    torch.manual_seed(0)
    feats = vgg19_features()
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # present in the published file, ignored by the loss
    path = tmp_path_factory.mktemp("vgg") / VGG19_FILE
    torch.save(state, path)
    return path, feats


def test_loader_maps_every_feature_key(vgg_file):
    path, reference = vgg_file
    net = load_vgg19(path)
    for (k, a), (k2, b) in zip(net.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not any(p.requires_grad for p in net.parameters())


def test_missing_weights_refuse_with_the_file_and_the_override(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as e:
        find_vgg19_weights(None, download=False)
    assert VGG19_FILE in str(e.value) and "loss.perceptual=l1_msssim" in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        find_vgg19_weights(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a torchvision VGG19"):
        load_vgg19(bad)


def test_build_perceptual_finds_the_hub_cache(vgg_file, tmp_path, monkeypatch):
    path, _ = vgg_file
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / VGG19_FILE).write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cfg = OmegaConf.create({"perceptual": "vgg19", "vgg19_weights": None, "perceptual_scales": [1.0, 0.5]})
    loss = build_perceptual(cfg)
    assert isinstance(loss, VGGPerceptualLoss)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert loss(x, x.detach()).item() == 0
    d = loss(x, torch.rand(1, 3, 64, 64))
    d.backward()
    assert d > 0 and x.grad.abs().sum() > 0


def test_substitute_and_region_and_gan_losses():
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert L1MSSSIMLoss()(x, x) < 1e-6 < L1MSSSIMLoss()(x, y)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 10:20, 10:20] = 1
    z = x.clone()
    z[..., 40:, 40:] = 0  # differs only outside the mask
    assert region_loss(z, x, mask) == 0 and region_loss(y, x, mask) > 0
    ones, zeros = torch.ones(3), torch.zeros(3)
    assert lsgan_discriminator_loss(ones, zeros) == 0 and lsgan_generator_loss(ones) == 0
    assert lsgan_generator_loss(zeros) == 1
    f = [torch.rand(2, 4, 8, 8)]
    assert feature_matching_loss(f, f) == 0
