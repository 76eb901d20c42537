"""A digits classifier trained here, on scikit-learn's bundled 8x8 digits (no download).

Training is seeded and takes a few seconds on one core; the trained weights are cached under
``EDGERUN_HOME/cache/zoo`` keyed by a hash of the recipe below, so every export of the model in a
session sees the same network. The held-out split gives real task accuracy for fp32 and
quantized programs, and real samples for calibration and test vectors.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

RECIPE = {"arch": "cnn-16-32", "epochs": 40, "batch": 64, "lr": 3e-3, "seed": 0, "test_fraction": 0.2, "v": 1}


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


def load_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The bundled digits, scaled to [0, 1], shaped [N, 1, 8, 8], split with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(RECIPE["seed"]))
    n_test = int(len(x) * RECIPE["test_fraction"])
    test, train = order[:n_test], order[n_test:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def _train(split) -> DigitsCNN:
    torch.manual_seed(RECIPE["seed"])
    model = DigitsCNN()
    x, y = split["train"]
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    model.train()
    for _ in range(RECIPE["epochs"]):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), RECIPE["batch"]):
            idx = perm[i : i + RECIPE["batch"]]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def digits_cnn():
    from edgerun.core.paths import cache_dir

    split = load_split()
    path = cache_dir("zoo") / f"digits_cnn-{recipe_hash()}.pt"
    model = DigitsCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        model = _train(split)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model.eval(), (split["test"][0][:1].clone(),)
