"""The Arm toolchain environment: ExecuTorch's Arm backend needs packages edgerun's venv must not hold.

``executorch.backends.arm.ethosu`` imports ``tosa_serializer`` (``tosa-tools``) and Vela
(``ethos-u-vela``); installing them (ExecuTorch 1.5.1's ``ethos-u`` extra pins ``ethos-u-vela==5.1.0``,
``tosa-tools==2026.5.0``, ``ml_dtypes==0.5.1``) downgrades numpy and flatbuffers and replaces ``flatc``.
So they live in a virtual environment of their own, ``EDGERUN_HOME/cache/toolchains/arm`` (or a path
given), made with edgerun's interpreter and seeing edgerun's site-packages through a ``.pth`` file
(``site.addsitedir``, appended after its own packages): torch, executorch and edgerun itself come from
edgerun's venv, what pip installs shadows edgerun's copy of the same package and never touches it.

A constraints file holds torch/torchvision/executorch at edgerun's versions; pip's ``--report`` lists
what it installed and the build fails if one of those shows up anyway. A marker file records the pins,
what was installed and the hash of the pins with edgerun's interpreter and torch/executorch versions;
the environment is reused while that hash matches and rebuilt when it does not. After a build the
environment must import ``executorch.backends.arm.ethosu`` and edgerun's own torch, or it is refused.

``edgerun toolchain arm`` (and :func:`ensure`) builds it; :func:`require` is what an export for an Arm
target calls: it never builds (no downloads at run time) and says which command to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgerun.core.errors import BundleError
from edgerun.core.version import base_site_packages, installed_version, pip_report_installed, venv_purelib

#: ExecuTorch 1.5.1's ``ethos-u`` extra (its wheel's METADATA), exactly
PINS = ("ethos-u-vela==5.1.0", "tosa-tools==2026.5.0", "ml_dtypes==0.5.1")
#: never from pip in the toolchain venv: edgerun's own (ABI-coupled, and torch is GBs)
SHARED = ("torch", "torchvision", "torchao", "executorch")
MARKER = "edgerun-toolchain.json"
PTH_NAME = "zz-edgerun-site.pth"
LAYOUT = 1
#: what the environment must import after a build
CHECK_IMPORTS = ("executorch.backends.arm.ethosu", "executorch.backends.arm.quantizer", "tosa_reference_model",
                 "ethosu.vela")
NAME = "arm"
COMMAND = "edgerun toolchain arm"


class ToolchainError(BundleError):
    """The Arm toolchain environment is missing, stale or could not be built (the message says what to do)."""

    default_stage = "toolchain"


def default_dir() -> Path:
    """Where the environment lives unless a path is given: ``EDGERUN_HOME/cache/toolchains/arm``
    (``EDGERUN_ARM_TOOLCHAIN`` overrides)."""
    env = os.environ.get("EDGERUN_ARM_TOOLCHAIN")
    if env:
        return Path(env).expanduser()
    from edgerun.core.paths import cache_dir

    return cache_dir("toolchains") / NAME


def pins_hash() -> str:
    """The identity of an environment: the pins, edgerun's interpreter, its site-packages and the shared
    packages' versions. A different hash means the environment must be rebuilt."""
    # the interpreter's path as given, normalised (``.venv/bin/../bin/python`` is the same venv); not resolved:
    # a venv's python is a symlink to the system's, and the venv is what matters
    ident = {"pins": list(PINS), "python": sys.version, "executable": os.path.normpath(os.path.abspath(sys.executable)),
             "base": base_site_packages(),
             "shared": {n: installed_version(n) for n in SHARED}, "layout": LAYOUT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def read_marker(venv: Path) -> dict | None:
    try:
        data = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status(venv: Path | None = None) -> dict:
    """What is there: ``ready`` (built with the current pins), ``stale`` (built with others) or ``missing``."""
    venv = Path(venv) if venv is not None else default_dir()
    marker = read_marker(venv)
    if marker is None or not python_of(venv).is_file():
        return {"state": "missing", "path": str(venv)}
    state = "ready" if marker.get("pins_hash") == pins_hash() else "stale"
    return {"state": state, "path": str(venv), **{k: marker.get(k) for k in ("pins", "installed", "created")}}


def require(venv: Path | None = None) -> Path:
    """The environment's python, or :class:`ToolchainError` naming the command that builds it. Never builds."""
    st = status(venv)
    if st["state"] == "ready":
        return python_of(Path(st["path"]))
    where = "" if venv is None and not os.environ.get("EDGERUN_ARM_TOOLCHAIN") else f" --path {st['path']}"
    if st["state"] == "stale":
        raise ToolchainError(f"the Arm toolchain environment at {st['path']} was built with other pins or another "
                             f"edgerun venv (torch/executorch changed), so exports for Ethos-U/Cortex-M targets "
                             "cannot use it.", hint=f"Rebuild it with `{COMMAND}{where}`.")
    raise ToolchainError(f"the Arm toolchain environment ({', '.join(PINS)}) is not built at {st['path']}: "
                         "exports for Ethos-U and Cortex-M targets run in it, because those packages must not be "
                         "installed into edgerun's own venv.",
                         hint=f"Build it once with `{COMMAND}{where}` (scripts/setup does).")




def _check_env(py: Path) -> dict:
    code = ("import json, importlib\nfrom importlib import metadata\n"
            f"for m in {CHECK_IMPORTS!r}: importlib.import_module(m)\n"
            "import torch, executorch, numpy\n"
            "v = lambda n: metadata.version(n)\n"
            "print(json.dumps({'torch': torch.__version__, 'torch_file': torch.__file__, "
            "'executorch': v('executorch'), 'numpy': numpy.__version__, 'ethos-u-vela': v('ethos-u-vela'), "
            "'tosa-tools': v('tosa-tools')}))")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"the Arm toolchain environment {py.parent.parent} was built but cannot import the Arm "
                             f"backend: {proc.stderr.strip()[-800:]}",
                             hint=f"Rebuild it with `{COMMAND} --force`; if that fails, report it with --debug.")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure(venv: Path | None = None, *, force: bool = False, log=None) -> dict:
    """Build (or reuse) the environment; returns its record (path, python, pins, installed, reused, seconds)."""
    from edgerun.core.paths import locked

    say = log or (lambda msg: print(f"[toolchain arm] {msg}", file=sys.stderr, flush=True))
    venv = Path(venv) if venv is not None else default_dir()
    want = pins_hash()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with locked(venv.parent / f".{venv.name}.lock"):
        marker = read_marker(venv)
        if not force and marker and marker.get("pins_hash") == want and python_of(venv).is_file():
            return {**marker, "reused": True}
        if venv.exists():
            if marker is None and any(venv.iterdir()):
                raise ToolchainError(f"{venv} exists and is not an edgerun toolchain environment (no {MARKER}); "
                                     "refusing to replace it.", hint="Give another --path, or remove it yourself.")
            say(f"{venv}: pins or edgerun's venv changed, rebuilding it" if marker else f"replacing {venv}")
            shutil.rmtree(venv)
        started = time.monotonic()
        say(f"creating {venv} with {sys.executable}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        py = python_of(venv)
        # site.addsitedir so edgerun's own .pth files run there too (edgerun is an editable install);
        # appended, so what pip installs here shadows edgerun's copy
        (venv_purelib(py) / PTH_NAME).write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in base_site_packages()))
        constraints = venv / "constraints.txt"
        constraints.write_text("".join(f"{n}=={installed_version(n)}\n" for n in SHARED if installed_version(n)))
        report = venv / "pip-report.json"
        say(f"pip install {' '.join(PINS)} (torch/executorch held at edgerun's)")
        proc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                               "--progress-bar", "off", "-c", str(constraints), "--report", str(report), *PINS],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (venv / "pip-install.log").write_text(proc.stdout)
        if proc.returncode != 0:
            raise ToolchainError(f"pip install of {' '.join(PINS)} into {venv} failed (exit {proc.returncode}); the log "
                                 f"is {venv / 'pip-install.log'}: {proc.stdout.strip()[-1500:]}",
                                 hint="Check that the package index is reachable, then run "
                                      f"`{COMMAND} --force`.")
        installed = pip_report_installed(report)
        bad = sorted(n for n in installed if n in SHARED or n.startswith("nvidia-"))
        if bad:
            raise ToolchainError(f"pip installed {', '.join(bad)} into {venv}: a pinned Arm package wants another "
                                 f"version than edgerun's ({', '.join(f'{n} {installed_version(n)}' for n in SHARED)}).",
                                 hint=f"Remove {venv}; the pins in edgerun/export/arm/toolchain.py must fit "
                                      "edgerun's torch and executorch.")
        seen = _check_env(py)
        import torch

        if seen["torch"] != torch.__version__ or str(venv) in seen["torch_file"]:
            raise ToolchainError(f"the Arm toolchain environment does not use edgerun's torch {torch.__version__}: it "
                                 f"imports {seen['torch']} from {seen['torch_file']}.",
                                 hint=f"Remove {venv} and run `{COMMAND}` again.")
        record = {"pins_hash": want, "pins": list(PINS), "path": str(venv), "python": str(py),
                  "base_site_packages": base_site_packages(), "constraints": constraints.read_text().split(),
                  "installed": installed, "versions": {k: v for k, v in seen.items() if k != "torch_file"},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.monotonic() - started, 1)}
        (venv / MARKER).write_text(json.dumps(record, indent=2))
        say(f"ready in {record['seconds']:.0f} s ({len(installed)} packages installed)")
        return {**record, "reused": False}


def active() -> bool:
    """True inside the toolchain environment (the Arm backend imports)."""
    try:
        import importlib.util

        return importlib.util.find_spec("tosa_serializer") is not None and \
            importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        return False
