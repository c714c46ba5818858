"""TemporalSR: face super-resolution of a window of T frames (x2, 256 -> 512 at the `full` preset; the CPU
`demo` preset goes x4, 128 -> 512, so its demo still ends at 512).

    bicubic upsampling of each LQ frame -> U-Net encoder (ResBlocks down to 4x4) -> latent codes (one per decoder
    layer) + SFT conditions from the U-Net's up path -> StyleGAN2 decoder (the face prior; GFPGAN v1.3
    layout, loadable and frozen) -> RGB

After every encoder and decoder block, each frame's features are mixed with its neighbours' (frames t-1,
t, t+1 concatenated, two 3x3 convolutions, the last zero-initialised, added as a residual): at
initialisation the network is exactly its per-frame path, and training learns how much to share.
With `residual` (for a decoder trained from scratch) the decoder's RGB is a correction added to the bicubic
upsampling, and every ToRGB head starts at zero: an untrained model is exactly bicubic, and each head still
gets a gradient from its (non-zero) features on the first step. A scalar output gain starting at 0 would not:
its gradient is the correlation of a random decoder's output with the error, so training sits near bicubic
for hundreds of steps. A loaded prior outputs whole images, so it is used with `residual: false`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError
from src.models.stylegan2 import StyleGAN2Decoder, channel_table


@dataclass
class SRConfig:
    out_size: int = 512
    scale: int = 2               # output / input size
    style_dim: int = 512
    num_mlp: int = 8
    channel_multiplier: float = 2
    narrow: float = 1.0
    temporal: bool = True
    residual: bool = True

    @property
    def in_size(self) -> int:
        return self.out_size // self.scale


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: float):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cin, 3, 1, 1), nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip, self.scale = nn.Conv2d(cin, cout, 1, bias=False), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.interpolate(out, scale_factor=self.scale, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv2(out), 0.2)
        return out + self.skip(F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False))


class TemporalMix(nn.Module):
    """x_t + conv(lrelu(conv([x_{t-1}, x_t, x_{t+1}]))), window ends replicated; the last conv starts at 0.
    The hidden width is a quarter of the features' (the original's full width would add ~80 M parameters
    at 512 px for the same receptive field)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(8, channels // 4)
        self.conv1 = nn.Conv2d(3 * channels, hidden, 3, 1, 1)
        self.conv2 = nn.Conv2d(hidden, channels, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        v = x.view(bt // frames, frames, c, h, w)
        prev = torch.cat([v[:, :1], v[:, :-1]], 1)
        nxt = torch.cat([v[:, 1:], v[:, -1:]], 1)
        y = self.conv1(torch.cat([prev, v, nxt], 2).view(bt, 3 * c, h, w))
        return x + self.conv2(F.leaky_relu(y, 0.2))


def _sft_head(channels: int, out: int, bias: float) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(channels, out, 3, 1, 1))
    nn.init.zeros_(head[2].weight)  # SFT starts as the identity: scale 1, shift 0
    nn.init.constant_(head[2].bias, bias)
    return head


class TemporalSR(nn.Module):
    def __init__(self, cfg: SRConfig):
        super().__init__()
        if cfg.scale < 2 or cfg.out_size % cfg.scale:
            raise UserError(f"model.sr.scale must be an integer >= 2 that divides out_size={cfg.out_size}, "
                            f"got {cfg.scale}")
        self.cfg = cfg
        ch = channel_table(cfg.out_size, cfg.channel_multiplier, cfg.narrow)
        self.decoder = StyleGAN2Decoder(cfg.out_size, cfg.style_dim, cfg.num_mlp, cfg.channel_multiplier, cfg.narrow)
        sizes = sorted(ch, reverse=True)  # out_size ... 4
        self.conv_body_first = nn.Conv2d(3, ch[cfg.out_size], 1)
        self.down = nn.ModuleList(ResBlock(ch[r], ch[r // 2], 0.5) for r in sizes[:-1])
        self.final_conv = nn.Conv2d(ch[4], ch[4], 3, 1, 1)
        self.final_linear = nn.Linear(ch[4] * 16, self.decoder.num_latent * cfg.style_dim)
        ups = sizes[::-1][1:]  # 8 ... out_size
        self.up = nn.ModuleList(ResBlock(ch[r // 2], ch[r], 2.0) for r in ups)
        sft = [ch[r] // 2 for r in ups]
        self.condition_scale = nn.ModuleList(_sft_head(ch[r], s, 1.0) for r, s in zip(ups, sft))
        self.condition_shift = nn.ModuleList(_sft_head(ch[r], s, 0.0) for r, s in zip(ups, sft))
        self.enc_mix = nn.ModuleList(TemporalMix(ch[r // 2]) for r in sizes[:-1]) if cfg.temporal else None
        self.dec_mix = nn.ModuleList(TemporalMix(ch[r]) for r in ups) if cfg.temporal else None
        if cfg.residual:
            for head in [self.decoder.to_rgb1, *self.decoder.to_rgbs]:
                nn.init.zeros_(head.modulated_conv.weight)  # biases start at 0 already

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S/scale, S/scale) in [0, 1] -> (B, T, 3, S, S)."""
        b, t = lq.shape[:2]
        x = lq.flatten(0, 1)
        base = F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
        feat = F.leaky_relu(self.conv_body_first(base * 2 - 1), 0.2)
        skips = []
        for i, down in enumerate(self.down):
            skips.append(feat)
            feat = down(feat)
            if self.enc_mix is not None:
                feat = self.enc_mix[i](feat, t)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        latent = self.final_linear(feat.flatten(1)).view(len(x), self.decoder.num_latent, -1)
        conditions = []
        for i, up in enumerate(self.up):
            feat = up(feat) + skips[-1 - i]
            conditions.append((self.condition_scale[i](feat), self.condition_shift[i](feat)))
        mix = (lambda f, level: self.dec_mix[level](f, t)) if self.dec_mix is not None else None
        rgb = self.decoder(latent, conditions, mix)
        out = base + rgb * 0.5 if self.cfg.residual else (rgb + 1) * 0.5
        return out.view(b, t, *out.shape[1:])


def build_sr(model_cfg) -> TemporalSR:
    c = model_cfg.sr
    # checkpoints written before `scale` existed were all x2
    return TemporalSR(SRConfig(out_size=c.out_size, scale=c.get("scale", 2), style_dim=c.style_dim, num_mlp=c.num_mlp,
                               channel_multiplier=c.channel_multiplier, narrow=c.narrow, temporal=c.temporal,
                               residual=c.residual))
