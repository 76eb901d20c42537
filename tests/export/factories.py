"""User-model factories for the tests (``factories:NAME`` with this folder on sys.path)."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + linear layers: exercises every scheme (8da4w needs a linear input width % 32 == 0)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), (torch.randn(1, 3, 8, 8),)


class TwoInTwoOut(nn.Module):
    def forward(self, a, b):
        return a + b, (a * b).sum(dim=1)


def two_in_two_out():
    return TwoInTwoOut(), (torch.randn(1, 4), torch.randn(1, 4))


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export must refuse it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def branchy():
    return Branchy(), (torch.randn(1, 4),)


def not_a_pair():
    return TinyNet()


def wrong_model_type():
    return "a string", (torch.randn(1, 4),)


def raises():
    raise RuntimeError("factory exploded on purpose")


NOT_CALLABLE = 3
