"""The MLPerf Tiny reference models, written here from their published architectures (the MLPerf Tiny
benchmark paper, Banbury et al. 2021, and its reference training code), with seeded random weights and
BatchNorm statistics settled on random inputs (:func:`vision._settle_batchnorm`) -- no downloads, no trained
weights, so their outputs say nothing about keywords, persons, CIFAR classes or anomalies: they are for size,
memory, speed and numerics.

* ``ds_cnn`` -- keyword spotting, DS-CNN (small): a 49x10 MFCC map, a 10x4 stride-2 convolution to 64
  channels, four depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, 64 channels, BN + ReLU after each),
  global average pool, 12 classes.
* ``resnet8`` -- image classification on CIFAR-10 shapes (32x32x3): a 3x3 convolution to 16 channels, three
  residual stacks of two 3x3 convolutions (16, 32 and 64 channels; the last two downsample by 2 with a 1x1
  stride-2 convolution on the shortcut), global average pool, 10 classes.
* ``mobilenet_v1_025`` -- visual wake words: MobileNetV1 at width 0.25 on 96x96x3, 2 classes (person / none).
* ``autoencoder_ad`` -- anomaly detection: the fully connected deep autoencoder on 640 log-mel features
  (5 frames x 128 bins): 640 -> 128 x4 -> 8 -> 128 x4 -> 640, BN + ReLU after every layer but the last.

The reference models are Keras models whose convolutions and dense layers carry biases (Keras' default);
they are kept here so the parameter counts are the published ones. The classifiers return logits (the
reference's softmax is left out: quantization checks compare logits, and softmax of logits is the same
ranking).
"""

from __future__ import annotations

import torch
from torch import nn

from .vision import _settle_batchnorm


def _conv_bn_relu(cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups),
            nn.BatchNorm2d(cout), nn.ReLU()]


class DSCNN(nn.Module):
    """DS-CNN (small) for keyword spotting: input ``[N, 1, 49, 10]`` (time x MFCC), 12 logits."""

    def __init__(self, classes: int = 12, filters: int = 64, blocks: int = 4):
        super().__init__()
        # Keras "same" padding of a 10x4 kernel at stride 2 on 49x10: 3 rows above, 4 below, 1 column each side
        layers: list[nn.Module] = [nn.ZeroPad2d((1, 1, 3, 4)), *_conv_bn_relu(1, filters, (10, 4), stride=2)]
        for _ in range(blocks):
            layers += _conv_bn_relu(filters, filters, 3, padding=1, groups=filters)   # depthwise
            layers += _conv_bn_relu(filters, filters, 1)                              # pointwise
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, 3, stride=stride, padding=1),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 for CIFAR-10 shapes: input ``[N, 3, 32, 32]``, 10 logits."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, 16, 3, padding=1))
        self.stacks = nn.Sequential(_Residual(16, 16, 1), _Residual(16, 32, 2), _Residual(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


# MobileNetV1's depthwise-separable layers at width 1.0: (output channels, stride)
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 at a width multiplier: input ``[N, 3, H, W]``, ``classes`` logits."""

    def __init__(self, width: float = 0.25, classes: int = 2):
        super().__init__()
        ch = int(32 * width)
        layers: list[nn.Module] = _conv_bn_relu(3, ch, 3, stride=2, padding=1)
        for out, stride in _MOBILENET_V1:
            out = int(out * width)
            layers += _conv_bn_relu(ch, ch, 3, stride=stride, padding=1, groups=ch)
            layers += _conv_bn_relu(ch, out, 1)
            ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class DeepAutoencoder(nn.Module):
    """The anomaly-detection autoencoder: input ``[N, 640]``, its reconstruction ``[N, 640]``."""

    def __init__(self, inputs: int = 640, hidden: int = 128, bottleneck: int = 8, depth: int = 4):
        super().__init__()
        widths = [inputs, *[hidden] * depth, bottleneck, *[hidden] * depth]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(hidden, inputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: zoo name -> (class, keyword arguments, example input shape)
MODELS = {
    "ds_cnn": (DSCNN, {}, (1, 1, 49, 10)),
    "resnet8": (ResNet8, {}, (1, 3, 32, 32)),
    "mobilenet_v1_025": (MobileNetV1, {"width": 0.25, "classes": 2}, (1, 3, 96, 96)),
    "autoencoder_ad": (DeepAutoencoder, {}, (1, 640)),
}


def build(name: str, seed: int = 0):
    """``(eval-mode model, example inputs)`` of an MLPerf Tiny model: seeded random weights, BatchNorm
    statistics settled on random inputs of its shape."""
    cls, kwargs, shape = MODELS[name]
    torch.manual_seed(seed)
    model = cls(**kwargs)
    if hasattr(model, "fc"):
        # PyTorch's default head init gives logits of ~5e-3 after a 256-wide average pool, near int8's smallest
        # activation scales; a variance-preserving init gives logits of a trained network's order
        nn.init.normal_(model.fc.weight, std=model.fc.in_features ** -0.5)
        nn.init.zeros_(model.fc.bias)
    _settle_batchnorm(model, shape, seed)
    example = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)
    return model.eval(), example
