"""The whole one-shot generator (warping generator + ID-preserving refiner) and its construction from
the `model:` config section."""
from __future__ import annotations

import torch
from torch import nn

from src.models.discriminator import PatchDiscriminator
from src.models.refiner import IdentityRefiner, RefinerConfig
from src.models.warping import WarpConfig, WarpingGenerator


class TalkingHeadGenerator(nn.Module):
    """source image + source/driving landmark guidance + identity embedding -> the driving frame."""

    def __init__(self, warp_cfg: WarpConfig, refiner_cfg: RefinerConfig):
        super().__init__()
        check_model_choices(warp_cfg.mesh_prior, refiner_cfg.blend_warped, warp_cfg.mouth_prior)
        self.warper = WarpingGenerator(warp_cfg)
        self.refiner = IdentityRefiner(refiner_cfg)

    @property
    def mesh_prior(self) -> bool:
        return self.warper.cfg.mesh_prior

    def forward(self, source: torch.Tensor, source_lmk: torch.Tensor, driving_lmk: torch.Tensor,
                identity: torch.Tensor, gaze: torch.Tensor, mouth_mask: torch.Tensor, refine: bool = True,
                source_feats: list[torch.Tensor] | None = None, source_points: torch.Tensor | None = None,
                driving_points: torch.Tensor | None = None, mesh_flow: torch.Tensor | None = None,
                mouth_unseen: torch.Tensor | None = None) -> dict:
        """`source_points`, `driving_points`: the (B, 478, 3) landmarks the guidance images were rendered from;
        the mesh prior builds its flow (and the mouth prior its `mouth_unseen`) from them, or takes them computed
        beforehand (all ignored without it)."""
        out = self.warper(source, source_lmk, driving_lmk, source_points, driving_points, mesh_flow, mouth_unseen)
        if refine:
            out["output"] = self.refiner(source, identity, out["flow"], out["occlusion"], gaze, source_lmk,
                                         driving_lmk, mouth_mask, warped=out["warped"], source_feats=source_feats)
        return out

    def source_features(self, source: torch.Tensor) -> list[torch.Tensor]:
        """The refiner's feature pyramid of the source: compute once, pass as `source_feats` for every frame."""
        return self.refiner.pyramid(source)


def check_model_choices(mesh_prior: bool, blend_warped: bool, mouth_prior: bool) -> None:
    """Choices of the model section that only work together; checked when a config is composed and when a
    generator is built."""
    if mouth_prior and not mesh_prior:
        raise ValueError("model.warp.mouth_prior=true needs model.warp.mesh_prior=true: the mouth openings are read "
                         "through the mesh flow")
    if mesh_prior and not blend_warped:
        raise ValueError("model.warp.mesh_prior=true needs model.refiner.blend_warped=true: the refiner starts from "
                         "passing the mesh-warped source through (set both false for the paper's learned-only warp)")


def warp_config(model_cfg) -> WarpConfig:
    w = model_cfg.warp
    return WarpConfig(resolution=model_cfg.resolution, code_dim=w.code_dim, ladder_channels=tuple(w.ladder_channels),
                      block_expansion=w.block_expansion, max_features=w.max_features, num_blocks=w.num_blocks,
                      flow_scale=w.flow_scale, mesh_prior=bool(w.mesh_prior), mouth_prior=bool(w.mouth_prior))


def refiner_config(model_cfg, id_dim: int) -> RefinerConfig:
    r = model_cfg.refiner
    return RefinerConfig(resolution=model_cfg.resolution, id_dim=id_dim, pyramid_channels=tuple(r.pyramid_channels),
                         decoder_max=r.decoder_max, decoder_min=r.decoder_min, spade_hidden=r.spade_hidden,
                         blend_warped=r.blend_warped)


def build_generator(model_cfg, id_dim: int) -> TalkingHeadGenerator:
    return TalkingHeadGenerator(warp_config(model_cfg), refiner_config(model_cfg, id_dim))


def build_discriminator(model_cfg) -> PatchDiscriminator:
    d = model_cfg.discriminator
    return PatchDiscriminator(channels=d.channels, num_layers=d.num_layers)
