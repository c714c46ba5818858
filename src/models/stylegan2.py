"""A StyleGAN2 decoder (the face prior of the temporal super-resolution net) with spatial feature transform
(SFT) conditions, in the parameter layout of GFPGAN's "clean" StyleGAN2 (`stylegan_decoder.*` in
GFPGANv1.3.pth), so that published weights load key for key (`load_prior`).

Differences from GFPGAN's forward, on purpose: the per-layer noise is the stored noise buffers, never fresh
random noise (fresh noise per frame is flicker), and `forward` takes a hook that mixes neighbouring frames
after every resolution block (the temporal fusion of TemporalSR).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError


def channel_table(out_size: int, channel_multiplier: float = 2, narrow: float = 1.0) -> dict[int, int]:
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: max(4, int(c * narrow)) for r, c in base.items() if r <= out_size}


class NormStyleCode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style (and demodulated)."""

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.cout, self.k, self.demodulate, self.upsample = cout, k, demodulate, upsample
        self.modulation = nn.Linear(style_dim, cin)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k) / math.sqrt(cin * k * k))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        w = self.weight * self.modulation(style).view(b, 1, c, 1, 1)
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(b, self.cout, 1, 1, 1)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, wd = x.shape[-2:]
        out = F.conv2d(x.reshape(1, b * c, h, wd), w.reshape(b * self.cout, c, self.k, self.k),
                       padding=self.k // 2, groups=b)
        return out.view(b, self.cout, h, wd)


class StyleConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, cout, 3, style_dim, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * 2**0.5 + self.weight * noise + self.bias
        return F.leaky_relu(out, 0.2)


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (F.interpolate(skip, scale_factor=2, mode="bilinear",
                                       align_corners=False) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))


class StyleGAN2Decoder(nn.Module):
    def __init__(self, out_size: int, style_dim: int = 512, num_mlp: int = 8, channel_multiplier: float = 2,
                 narrow: float = 1.0, sft_half: bool = True):
        super().__init__()
        ch = self.channels = channel_table(out_size, channel_multiplier, narrow)
        self.log_size, self.sft_half = int(math.log2(out_size)), sft_half
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        # kept for the published weight layout only: TemporalSR feeds latents directly, so it gets no gradient
        # (and must not require one: DDP would report it as an unused parameter)
        self.style_mlp = nn.Sequential(*mlp).requires_grad_(False)
        self.constant_input = ConstantInput(ch[4])
        self.style_conv1 = StyleConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.style_convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        cin = ch[4]
        for i in range(3, self.log_size + 1):
            cout = ch[2**i]
            self.style_convs.append(StyleConv(cin, cout, style_dim, upsample=True))
            self.style_convs.append(StyleConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim))
            cin = cout

    def forward(self, latent: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]],
                mix: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """latent (B, num_latent, style_dim); conditions: (scale, shift) per resolution from 8 up, applied by
        SFT after each block's two convolutions; mix(features, level) fuses neighbouring frames."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        out = self.constant_input.weight.expand(latent.shape[0], -1, -1, -1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for level, (conv1, conv2, to_rgb) in enumerate(zip(self.style_convs[::2], self.style_convs[1::2],
                                                           self.to_rgbs)):
            out = conv1(out, latent[:, i], noise[i])
            out = conv2(out, latent[:, i + 1], noise[i + 1])
            if level < len(conditions):
                scale, shift = conditions[level]
                if self.sft_half:  # GFPGAN v1.3: half of the channels keep the prior's features untouched
                    keep, mod = out.chunk(2, dim=1)
                    out = torch.cat([keep, mod * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            if mix is not None:
                out = mix(out, level)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


PRIOR_PREFIX = "stylegan_decoder."


def load_prior_state(decoder: StyleGAN2Decoder, state: dict, path: str | Path) -> int:
    """Load a StyleGAN2 decoder from the contents `state` of a GFPGAN v1.3-format file (`params_ema`/`params`, keys
    under `stylegan_decoder.`) or of a bare StyleGAN2-clean state dict (read from `path` by
    src.checkpoints.load_sr_prior); every decoder key must be present with its shape. Returns the number of tensors
    loaded."""
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if any(k.startswith(PRIOR_PREFIX) for k in state):
        state = {k[len(PRIOR_PREFIX):]: v for k, v in state.items() if k.startswith(PRIOR_PREFIX)}
    target = decoder.state_dict()
    missing = sorted(set(target) - set(state))
    shapes = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    if missing or shapes:
        raise UserError(f"{path} does not fit the SR decoder (missing: {missing[:4]}, shape mismatch: "
                        f"{[f'{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}' for k in shapes[:3]]}); "
                        f"check the sr model preset (out_size, channel_multiplier, narrow)")
    decoder.load_state_dict({k: state[k] for k in target})
    return len(target)
