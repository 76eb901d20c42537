"""Export your own model for a Raspberry Pi 5, as fp32 and as int8, and read what the artifacts say.

    python examples/export_your_model.py [--out DIR] [--target rpi5]

Each export is verified against eager PyTorch on test vectors (test vector 0 is the model's own
example input); a program that disagrees beyond its scheme's thresholds raises VerificationFailed
and is kept, marked failed. The manifest (``edgerun.core.artifact.Manifest``) is read back typed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so that "my_model:small_cnn" imports; use PYTHONPATH in your own code

from edgerun.core.artifact import read_manifest  # noqa: E402
from edgerun.export import export_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts"), help="where the artifact directories go")
    ap.add_argument("--target", default="rpi5")
    args = ap.parse_args()

    sizes = {}
    for scheme in ("fp32", "int8"):
        out = args.out / f"my_model-{args.target}-{scheme}"
        manifest = export_model("my_model:small_cnn", args.target, scheme, out,
                                on_stage=lambda stage, s=scheme: print(f"{s}: {stage}", file=sys.stderr))
        again = read_manifest(out)  # what any later step reads: the typed manifest
        assert again.pte_sha256 == manifest.pte_sha256
        worst = min(o.snr_db for o in again.verification.outputs)
        print(f"{scheme:5} {out}: {again.pte_bytes:,} bytes, status {again.status}, worst SNR vs eager "
              f"{worst:.1f} dB, recipe {again.recipe_hash}, delegated {dict(again.operators.delegated)}")
        sizes[scheme] = again.pte_bytes
    print(f"int8 is {sizes['int8'] / sizes['fp32']:.0%} of fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
