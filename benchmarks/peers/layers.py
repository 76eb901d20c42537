"""Single layers for telling a kernel gap from a graph gap (``--models layers:conv64`` etc.).

A whole model's time inside one delegate call says nothing about which kernel is slow; one layer
in every runtime does. Run from the repository root:

    PYTHONPATH=benchmarks/peers .venv/bin/python benchmarks/peers/run.py \\
        --models layers:conv64,layers:conv256,layers:linear --schemes fp32,int8 --threads 1 --rounds 3 \\
        --iterations 50 --runtimes edgerun,litert,onnxruntime
"""

from __future__ import annotations

import torch
from torch import nn


def conv64():
    """ResNet-18's layer1 convolution: 3x3, 64 -> 64 channels at 56x56, with its ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval(), (torch.randn(1, 64, 56, 56),)


def conv256():
    """ResNet-18's layer3 convolution: 3x3, 256 -> 256 channels at 14x14, with its ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()).eval(), (torch.randn(1, 256, 14, 14),)


def linear():
    """The text encoder's feed-forward block: 32 tokens x 128 -> 384 -> 128."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 384), nn.ReLU(), nn.Linear(384, 128)).eval(), (torch.randn(1, 32, 128),)


def dw144():
    """MobileNetV2's second block's depthwise convolution: 3x3, 144 channels at 56x56, with its ReLU6."""
    torch.manual_seed(0)
    return (nn.Sequential(nn.Conv2d(144, 144, 3, padding=1, groups=144), nn.ReLU6()).eval(),
            (torch.randn(1, 144, 56, 56),))


def pw144():
    """MobileNetV2's second block's expansion: 1x1, 24 -> 144 channels at 56x56, with its ReLU6."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(24, 144, 1), nn.ReLU6()).eval(), (torch.randn(1, 24, 56, 56),)
