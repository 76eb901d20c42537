"""Classifiers trained here, on scikit-learn's bundled 8x8 digits (no download).

Training is seeded; the trained weights are cached under ``EDGERUN_HOME/cache/zoo`` keyed by a hash
of the model's training recipe, so every export of a model in a session sees the same network. The
held-out split (the same 20 % of digits for every model here) gives real task accuracy for fp32,
quantized and compressed programs, and real samples for calibration and test vectors.

- ``digits_cnn``: two small convolutions on the 8x8 images; trains in seconds, runs in microseconds.
- ``digits_mobilenet_v2``: torchvision's MobileNetV2 (width 1.0, one input channel, first convolution
  at stride 1 as CIFAR-sized inputs take it) on the digits upscaled to 32x32: a network large enough that
  a program's latency is measurable (about a millisecond, not call overhead), with real accuracy, so
  a compression recipe can be judged on both (98.1 % held-out). Trains once, in about ten minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

RECIPE = {"arch": "cnn-16-32", "epochs": 40, "batch": 64, "lr": 3e-3, "seed": 0, "test_fraction": 0.2, "v": 1}
MOBILENET_RECIPE = {"arch": "torchvision-mobilenet_v2-w1.0-in1-stem-s1", "size": 32, "epochs": 12, "batch": 64,
                    "lr": 2e-3, "schedule": "one-cycle", "seed": 0, "test_fraction": 0.2, "v": 1}


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_mobilenet_v2_module() -> nn.Module:
    """MobileNetV2 for [N, 1, 32, 32] digits: torchvision's definition, width 1.0, 10 classes; the stem takes
    one channel at stride 1 (at stride 2 a 32x32 input is 1x1 four blocks before the end)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(num_classes=10)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


def load_split(size: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The bundled digits, scaled to [0, 1], shaped [N, 1, 8, 8] (or bilinearly upscaled to ``size``), split
    with a fixed seed: the same held-out digits whatever the size."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    if size is not None:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(data.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(RECIPE["seed"]))
    n_test = int(len(x) * RECIPE["test_fraction"])
    test, train = order[:n_test], order[n_test:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def _train(model: nn.Module, split, recipe: dict[str, Any]) -> nn.Module:
    x, y = split["train"]
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    steps = recipe["epochs"] * -(-len(x) // recipe["batch"])
    one_cycle = recipe.get("schedule") == "one-cycle"   # else a constant rate (digits_cnn's recipe names none)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["lr"], total_steps=steps) if one_cycle else None
    gen = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for _ in range(recipe["epochs"]):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe["batch"]):
            idx = perm[i : i + recipe["batch"]]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def recipe_hash(recipe: dict[str, Any] = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _trained(name: str, make: Callable[[], nn.Module], recipe: dict[str, Any], split) -> nn.Module:
    """The model trained by ``recipe``, from the zoo cache when an earlier run trained it."""
    from edgerun.core.paths import cache_dir

    path = cache_dir("zoo") / f"{name}-{recipe_hash(recipe)}.pt"
    torch.manual_seed(recipe["seed"])
    model = make()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = _train(model, split, recipe)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def digits_cnn():
    split = load_split()
    return _trained("digits_cnn", DigitsCNN, RECIPE, split), (split["test"][0][:1].clone(),)


def digits_mobilenet_v2():
    split = load_split(MOBILENET_RECIPE["size"])
    model = _trained("digits_mobilenet_v2", digits_mobilenet_v2_module, MOBILENET_RECIPE, split)
    return model, (split["test"][0][:1].clone(),)
