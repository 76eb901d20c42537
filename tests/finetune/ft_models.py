"""Small models for the fine-tuning tests (``package.module:factory`` specs; tests/finetune is on sys.path)."""

import torch
from torch import nn


def mlp():
    """64 -> 32 -> 10, seeded random weights: losses start near ln(10), so curves are easy to compare."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return net.eval(), (torch.zeros(1, 1, 8, 8),)
