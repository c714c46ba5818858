"""The ID-preserving refiner: synthesises the driving frame from the warped source features and the
source's identity embedding.

    source -> feature pyramid (e.g. 64@R, 128@R/2, 256@R/4, 512@R/8), each level warped by the flow and
    joined with the occlusion map, gaze heat-maps, source and driving landmark images and the
    mouth-masked driving landmark image -> SPADE conditioning per level;
    identity embedding -> transposed conv to 4x4 -> fused residual blocks (SPADE where the warped features
    are reliable, AdaIN(identity) elsewhere, mixed by a learned mask) up to R -> image in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.models.blocks import FusedResBlock
from src.models.warping import warp

GUIDE_CHANNELS = 1 + 2 + 3 + 3 + 3  # occlusion, gaze (2), source / driving / mouth-masked driving landmark images


@dataclass
class RefinerConfig:
    resolution: int = 256
    id_dim: int = 512
    pyramid_channels: tuple[int, ...] = (64, 128, 256, 512)  # at R, R/2, R/4, R/8
    decoder_max: int = 512
    decoder_min: int = 64
    spade_hidden: int = 128
    blend_warped: bool = False  # output = occ * warped + (1 - occ) * synthesised (not in the paper; see README)


class FeaturePyramid(nn.Module):
    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 7, padding=3), nn.InstanceNorm2d(channels[0], affine=True),
                                  nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i], channels[i + 1], 4, stride=2, padding=1),
                          nn.InstanceNorm2d(channels[i + 1], affine=True), nn.LeakyReLU(0.2, inplace=True))
            for i in range(len(channels) - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x * 2 - 1)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats


class IdentityRefiner(nn.Module):
    def __init__(self, cfg: RefinerConfig):
        super().__init__()
        self.cfg = cfg
        r = cfg.resolution
        self.levels = len(cfg.pyramid_channels)
        self.pyramid = FeaturePyramid(tuple(cfg.pyramid_channels))
        self.resolutions = [4 * 2**i for i in range(int(math.log2(r // 4)) + 1)]  # 4, 8, ..., R
        ch = [self.channels_at(res) for res in self.resolutions]
        self.start = nn.ConvTranspose2d(cfg.id_dim, ch[0], 4)  # (B, id, 1, 1) -> (B, C, 4, 4)
        self.blocks = nn.ModuleList()
        for i, res in enumerate(self.resolutions):
            level = self.level_for(res)
            cond = cfg.pyramid_channels[level] + GUIDE_CHANNELS
            cout = ch[i + 1] if i + 1 < len(ch) else ch[i]
            self.blocks.append(FusedResBlock(ch[i], cout, cond, cfg.id_dim, cfg.spade_hidden))
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(ch[-1], 3, 3, padding=1))

    def channels_at(self, res: int) -> int:
        return max(self.cfg.decoder_min, min(self.cfg.decoder_max, self.cfg.decoder_max * 32 // res))

    def level_for(self, res: int) -> int:
        """The pyramid level whose resolution conditions a decoder block (the coarsest for small blocks)."""
        return min(self.levels - 1, int(round(math.log2(self.cfg.resolution / res))))

    def forward(self, source: torch.Tensor, identity: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor,
                gaze: torch.Tensor, source_lmk: torch.Tensor, driving_lmk: torch.Tensor,
                mouth_mask: torch.Tensor, warped: torch.Tensor | None = None,
                source_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`source_feats`: self.pyramid(source), precomputed once when one source drives many frames (a batch
        of one is broadcast to the batch)."""
        guide = torch.cat([occlusion, gaze, source_lmk, driving_lmk, driving_lmk * mouth_mask], 1)
        if source_feats is None:
            source_feats = self.pyramid(source)
        conds = []
        for feat in source_feats:
            feat = feat.expand(len(flow), -1, -1, -1)
            g = F.interpolate(guide, size=feat.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            conds.append(torch.cat([warp(feat, flow), g], 1))
        identity = F.normalize(identity, dim=1)
        x = self.start(identity[:, :, None, None])
        for res, block in zip(self.resolutions, self.blocks):
            if x.shape[-1] != res:
                x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
            x = block(x, conds[self.level_for(res)], identity)
        synth = (torch.tanh(self.to_rgb(x)) + 1) / 2
        if self.cfg.blend_warped and warped is not None:
            # where the occlusion map says the warped source is visible, keep it; synthesise the rest
            return occlusion * warped + (1 - occlusion) * synth
        return synth
