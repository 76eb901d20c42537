"""A model of your own, as edgerun takes it: ``factory()`` returns ``(model, example_inputs)``.

Give it to edgerun as ``my_model:small_cnn`` (with this folder on ``PYTHONPATH``), on the command line
(``edgerun export my_model:small_cnn --target rpi5``) or from Python (``export_model("my_model:small_cnn", …)``).
The example inputs fix the shapes the program will take; they become the artifact's test vector 0.
"""

import torch


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def small_cnn():
    torch.manual_seed(0)
    return SmallCNN().eval(), (torch.randn(1, 3, 32, 32),)
