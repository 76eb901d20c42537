"""The peers' own virtual environment: ONNX Runtime and LiteRT, never installed into edgerun's.

``EDGERUN_HOME/cache/benchmarks/peers-venv`` is made with edgerun's own interpreter (``python -m venv``)
and sees edgerun's site-packages through a ``.pth`` file, so torch, torchvision, torchao and edgerun
itself come from there and pip counts torch as installed (it would otherwise fetch a multi-GB wheel
for litert-torch's ``torch<2.15``). What pip installs lands in the peer venv and shadows edgerun's
copy of the same package (``sys.path`` has the peer's site-packages first); pip never touches edgerun's
venv: a package outside the environment is "not uninstalled", only shadowed.

A constraints file pins torch and torchvision to edgerun's versions, pip's ``--report`` lists what it
installed, and the build fails with a clear message when a torch wheel shows up anyway. A marker
file holds the hash of the pins (and of edgerun's interpreter and torch): the venv is rebuilt when
they change, reused otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgerun.core.paths import locked
from edgerun.core.version import base_site_packages, installed_version, pip_report_installed, venv_purelib

# The peers, pinned (each checked on PyPI when this was written). onnxscript is what torch.onnx.export's
# dynamo path needs; 0.7.2 is the version pip picked with these pins.
PINS = (
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "onnxscript==0.7.2",
    "ai-edge-litert==2.3.0",
    "litert-torch==0.10.0",
)
# Never from pip in the peer venv: they must be edgerun's (ABI-coupled, and torch is GBs).
SHARED = ("torch", "torchvision")
MARKER = "edgerun-peers.json"
PTH_NAME = "zz-edgerun-site.pth"


class PeerVenvError(RuntimeError):
    """The peer venv could not be made as required (the message says what to do)."""


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def venv_dir() -> Path:
    from edgerun.core.paths import cache_dir

    return cache_dir("benchmarks") / "peers-venv"


def pins_hash() -> str:
    ident = {"pins": list(PINS), "python": sys.version, "base": base_site_packages(),
             "shared": {n: installed_version(n) for n in SHARED}, "layout": 1}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"



def read_marker(venv: Path) -> dict | None:
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_peer_venv(*, force: bool = False) -> dict:
    """Create (or reuse) the peer venv; returns its record (path, python, pins, seconds, reused...)."""
    venv = venv_dir()
    want = pins_hash()
    with locked(venv.parent / "peers-venv.lock"):
        marker = read_marker(venv)
        if not force and marker and marker.get("pins_hash") == want and python_of(venv).is_file():
            return {**marker, "reused": True}
        if venv.exists():
            log(f"peer venv {venv}: pins or base changed, rebuilding it" if marker else f"removing {venv}")
            shutil.rmtree(venv)
        started = time.monotonic()
        log(f"creating the peer venv {venv} with {sys.executable}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = python_of(venv)
        purelib = venv_purelib(py)
        # site.addsitedir (not a bare path line) so the .pth files over there run too: edgerun is an
        # editable install whose import hook is itself a .pth. Appended, so the peer's own packages win.
        lines = [f"import site; site.addsitedir({p!r})" for p in base_site_packages()]
        (purelib / PTH_NAME).write_text("\n".join(lines) + "\n")
        constraints = venv / "constraints.txt"
        constraints.write_text("".join(f"{n}=={installed_version(n)}\n" for n in SHARED if installed_version(n)))
        report = venv / "pip-report.json"
        log(f"pip install {' '.join(PINS)} (torch/torchvision held at edgerun's)")
        proc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                               "-c", str(constraints), "--report", str(report), *PINS],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (venv / "pip-install.log").write_text(proc.stdout)
        if proc.returncode != 0:
            raise PeerVenvError(f"pip install of the peers failed (exit {proc.returncode}); the log is "
                                f"{venv / 'pip-install.log'}:\n{proc.stdout[-3000:]}")
        installed = pip_report_installed(report)
        bad = sorted(n for n in installed if n in SHARED or n.startswith("nvidia-"))
        if bad:
            raise PeerVenvError(f"pip installed {', '.join(bad)} into the peer venv: a peer requires another torch "
                                f"than edgerun's {installed_version('torch')}. Remove {venv}, relax the pins in "
                                f"benchmarks/peers/venv.py, and never let the peers download torch.")
        peer_torch = subprocess.run([str(py), "-c", "import torch; print(torch.__version__, torch.__file__)"],
                                    capture_output=True, text=True)
        version, _, where = peer_torch.stdout.strip().partition(" ")
        import torch

        if peer_torch.returncode != 0 or version != torch.__version__ or str(venv) in where:
            raise PeerVenvError(f"the peer venv does not import edgerun's torch {torch.__version__}: got "
                                f"{version or peer_torch.stderr.strip()[-500:]} from {where or '?'}.")
        record = {"pins_hash": want, "pins": list(PINS), "path": str(venv), "python": str(py),
                  "base_site_packages": base_site_packages(), "constraints": constraints.read_text().split(),
                  "installed": installed, "torch": version,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.monotonic() - started, 1)}
        (venv / MARKER).write_text(json.dumps(record, indent=2))
        log(f"peer venv ready in {record['seconds']:.0f} s ({len(installed)} packages)")
        return {**record, "reused": False}



def peer_versions(py: Path) -> dict[str, str | None]:
    """Versions of the packages that matter, as the peer venv sees them."""
    code = ("import json\nfrom importlib import metadata\nout={}\n"
            "for n in ('onnxruntime','onnx','onnxscript','ai-edge-litert','litert-torch','ai-edge-quantizer',"
            "'litert-converter','torch','torchao','torchvision','numpy','transformers'):\n"
            "    try: out[n]=metadata.version(n)\n    except metadata.PackageNotFoundError: out[n]=None\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


if __name__ == "__main__":  # `python benchmarks/peers/peer_venv.py [--force]`: just make the venv
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(ensure_peer_venv(force="--force" in sys.argv), indent=2))
