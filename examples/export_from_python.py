"""Export a model defined right here, from Python: no zoo name, no factory module.

    python examples/export_from_python.py [--out DIR] [--target host] [--recipe int8-dynamic]

``export_model`` takes the ``nn.Module`` and its example inputs (or a ``(module, example_inputs)`` pair,
or a ``torch.export.ExportedProgram``). The recipe hash comes from the module's code and its weights:
train it a little more and the next export has another hash, so a cache never hands back a stale program.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from edgerun.export import ExportOptions, export_model, parse_recipe


class KeywordSpotter(nn.Module):
    """A small 1-D conv net over 40 MFCC frames: the kind of model one writes in a notebook."""

    def __init__(self, words: int = 12):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(10, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(32, words)

    def forward(self, mfcc):
        return self.head(self.conv(mfcc).flatten(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts"), help="where the artifact directories go")
    ap.add_argument("--target", default="host")
    ap.add_argument("--recipe", default="int8-dynamic", help="recipe text, e.g. fp32, int8, 8da4w:group_size=32")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = KeywordSpotter().eval()
    example = (torch.randn(1, 10, 40),)
    recipe = parse_recipe(args.recipe)   # checked before any work: a typo is a UsageError naming what exists
    m = export_model(model, args.target, recipe, args.out / "kws", example_inputs=example,
                     options=ExportOptions(vectors=3),
                     on_stage=lambda stage: print(f"  {stage}", file=sys.stderr))
    worst = min(o.snr_db for o in m.verification.outputs)
    print(f"{m.model.name} ({m.model.source}) for {m.target.name}, recipe {m.scheme.spec}: status {m.status}, "
          f"{m.pte_bytes:,} bytes, worst SNR vs eager {worst:.1f} dB, delegated {dict(m.operators.delegated)}")
    print(f"recipe hash {m.recipe_hash}")

    with torch.no_grad():             # one weight changes ...
        model.head.bias[0] += 0.1
    again = export_model((model, example), args.target, recipe, args.out / "kws-tuned",
                         options=ExportOptions(vectors=3))
    print(f"after changing a weight: recipe hash {again.recipe_hash} "
          f"({'different' if again.recipe_hash != m.recipe_hash else 'THE SAME'})")
    return 0 if m.ok and again.ok and again.recipe_hash != m.recipe_hash else 1


if __name__ == "__main__":
    sys.exit(main())
