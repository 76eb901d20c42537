"""Small user models for the runtime tests (``rt_factories:NAME``; this folder is put on sys.path).

Named apart from tests/export/factories.py so both can be importable in one pytest session.
"""

import torch
from torch import nn


class SmallConv(nn.Module):
    """Two convolutions and a linear layer: XNNPACK delegates all of it; portable needs
    aten::convolution.out, which only the optimized-kernel library registers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


def small_conv():
    torch.manual_seed(0)
    return SmallConv().eval(), (torch.randn(1, 3, 16, 16),)


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * b + a, (a - b).sum(dim=1)


def two_inputs():
    return TwoInputs().eval(), (torch.randn(2, 5), torch.randn(2, 5))
