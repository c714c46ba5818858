"""Losses: the VGG19 loader on weights saved in torchvision's key format, its refusal without them, and
the behaviour of each loss."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.losses.gan import feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from src.losses.perceptual import (
    VGG19_FILE,
    L1MSSSIMLoss,
    VGGPerceptualLoss,
    build_perceptual,
    find_vgg19_weights,
    load_vgg19,
    vgg19_features,
)
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


def test_iresnet_loader_maps_every_key_and_names_mismatches(tmp_path):
    from src.checkpoints import load_face_recognition as load_iresnet
    from src.models.iresnet import build_iresnet

    net = build_iresnet("r18", width=8).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a dropped key would show in the output
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "backbone.pth")
    loaded = load_iresnet(tmp_path / "backbone.pth", "r18")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with pytest.raises(UserError, match="missing: .*layer1.2.bn1"):  # an r18 file read as r34 names the keys it lacks
        load_iresnet(tmp_path / "backbone.pth", "r34")
    with pytest.raises(UserError, match="do not exist"):
        load_iresnet(tmp_path / "nothing.pth")


def test_identity_crop_matches_the_arcface_alignment_and_passes_gradients(fixtures_dir):
    import cv2

    from src.faces.align import aligned_face
    from src.faces.landmarks import FaceMesh
    from src.losses.identity import IdentityLoss, arcface_grids
    from src.models.iresnet import build_iresnet

    rgb = cv2.imread(str(fixtures_dir / "portraits" / "portrait_a.jpg"))[:, :, ::-1]
    rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)  # training resolution: little aliasing at 112
    with FaceMesh(static=True) as mesh:
        lm = mesh(rgb)[0]  # normalised landmarks
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    lms = torch.from_numpy(lm)[None].float()
    crop = torch.nn.functional.grid_sample(image, arcface_grids(lms, (256, 256)), align_corners=False)[0]
    reference = torch.from_numpy(aligned_face(rgb, lm, 112)).permute(2, 0, 1).float() / 255
    assert (crop - reference).abs()[:, 8:-8, 8:-8].mean() < 0.005  # the crop of align.py (cv2), to interpolation error
    loss = IdentityLoss(build_iresnet("r18", width=8).eval())
    assert loss(image, image, lms) < 1e-5
    noisy = (image + 0.3 * torch.randn_like(image)).clamp(0, 1).requires_grad_(True)
    value = loss(noisy, image, lms)
    value.backward()
    assert value > 0 and noisy.grad.abs().sum() > 0
