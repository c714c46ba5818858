"""IResNet face-recognition backbone in the key format of InsightFace's `arcface_torch` (`backbone.pth`).

This is the differentiable face recogniser behind the optional identity loss and CSIM: the ONNX ArcFace
used for the data's identity embeddings has no gradients. Published weights (for example
`ms1mv3_arcface_r50_fp16/backbone.pth` from the arcface_torch model zoo) load with `weights_only=True`;
every key must match, so a file of another architecture fails with the keys named.
Input: 112x112 RGB ArcFace-aligned faces scaled to [-1, 1]; output: a 512-D (unnormalised) embedding.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.errors import UserError

LAYERS = {"r18": [2, 2, 2, 2], "r34": [3, 4, 6, 3], "r50": [3, 4, 14, 3], "r100": [3, 13, 30, 3]}


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, layers: list[int], width: int = 64, num_features: int = 512):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        inplanes = width
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stage = [IBasicBlock(inplanes, planes, stride=2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(inplanes * 7 * 7, num_features)  # 112 / 2^4 = 7
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build_iresnet(arch: str = "r50", width: int = 64) -> IResNet:
    if arch not in LAYERS:
        raise UserError(f"unknown face-recognition architecture '{arch}' (choose from {', '.join(LAYERS)})")
    return IResNet(LAYERS[arch], width)


def load_iresnet_state(state: dict, path: str | Path, arch: str = "r50") -> IResNet:
    """An IResNet with the weights `state` of an arcface_torch `backbone.pth` (a plain state dict, read from `path`
    by src.checkpoints.load_face_recognition), in eval mode and frozen. Every key must be present with its shape;
    otherwise the error names the keys that differ."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    width = state["conv1.weight"].shape[0] if "conv1.weight" in state else 64  # 64 in every published file
    net = build_iresnet(arch, width)
    target = net.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        raise UserError(f"{path} is not an arcface_torch IResNet-{arch[1:]} state dict (missing: {missing[:4]}, "
                        f"unexpected: {unexpected[:4]}, shape mismatch: {shapes[:4]}); set loss.identity_arch")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
