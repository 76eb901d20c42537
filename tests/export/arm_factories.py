"""User-model factories for the Arm tests (``arm_factories:NAME`` with this folder on sys.path)."""

import torch
from torch import nn


class TinySeparable(nn.Module):
    """A MobileNet block in miniature, NCHW: an ordinary conv with BatchNorm and ReLU6, a depthwise conv
    (groups == channels), a pointwise conv, global average pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.conv(x)))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_separable():
    torch.manual_seed(0)
    model = TinySeparable().eval()
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model, (torch.randn(1, 3, 8, 8),)


class TinyCeilPool(nn.Module):
    """A conv, then a max pooling with ceil_mode (no NHWC CMSIS-NN form), then linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2, ceil_mode=True)
        return self.fc(x.flatten(1))


def tiny_ceil_pool():
    torch.manual_seed(0)
    return TinyCeilPool().eval(), (torch.randn(1, 3, 7, 7),)
