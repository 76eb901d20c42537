"""What every part of the peers benchmark shares, in either venv: the work directory's layout, the
weights hash, loading the model back, feeding inputs and scoring outputs.

Imports nothing heavy at module level (numpy and the standard library): the ONNX Runtime and LiteRT
workers import this and must not pay for torch. A work directory (one per model, keyed by its weights)::

    meta.json            model name, weights sha256, inputs/outputs (shape, dtype), calibration facts
    weights.pt           the state_dict every converter starts from
    model.pt             the whole module pickled (eager/torch.compile workers load it fast), if it pickles
    example.npz          input_0, input_1 ... the example inputs (batch as the model takes them)
    example/input_I.npy  the same, one file per input, for edgerun's runner
    calibration.npz      input_0 ... stacked [16, *shape]: ExportOptions.calibration's format
    reference.npz        output_0 ... eager fp32 outputs on the example
    edgerun_peers_model.py  the factory (`edgerun_peers_model:build`): the zoo/user definition + weights.pt
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FACTORY_MODULE = "edgerun_peers_model"
CALIBRATION_SAMPLES = 16
SEED = 0


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def sources_hash(*paths: Path) -> str:
    """sha256 over files' bytes (and their names): part of a conversion's cache key."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def state_dict_sha256(state_dict) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every entry, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_meta(workdir: Path) -> dict:
    return json.loads((Path(workdir) / "meta.json").read_text())


def _npz_list(path: Path, prefix: str) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        n = len([k for k in z.files if k.startswith(prefix)])
        return [z[f"{prefix}{i}"] for i in range(n)]


def example_inputs(workdir: Path) -> list[np.ndarray]:
    return _npz_list(Path(workdir) / "example.npz", "input_")


def calibration_inputs(workdir: Path) -> list[list[np.ndarray]]:
    """Calibration samples as a list of per-sample input lists (each input with its batch dim)."""
    stacked = _npz_list(Path(workdir) / "calibration.npz", "input_")
    return [[arr[n] for arr in stacked] for n in range(stacked[0].shape[0])]


def reference_outputs(workdir: Path) -> list[np.ndarray]:
    return _npz_list(Path(workdir) / "reference.npz", "output_")


def load_model(workdir: Path, *, pickled: bool = False):
    """``(model, example_inputs)`` from a work directory, the weights hash checked.

    Default: rebuild the definition through edgerun's zoo (``get_model(name).build()``: a zoo entry's
    process settings, e.g. text_encoder turning off the MHA fast path, come with it), then load
    ``weights.pt`` over it. ``pickled``: load ``model.pt`` instead when it exists (no rebuild; the
    eager/torch.compile workers use it). Either way the state_dict's sha256 must be the one recorded.
    """
    import torch

    workdir = Path(workdir)
    meta = read_meta(workdir)
    model = None
    if pickled and (workdir / "model.pt").is_file():
        model = torch.load(workdir / "model.pt", weights_only=False)
    if model is None:
        from edgerun.export.zoo import get_model

        model, _ = get_model(meta["model"]).build()
        model.load_state_dict(torch.load(workdir / "weights.pt", weights_only=True))
    model.eval()
    got = state_dict_sha256(model.state_dict())
    if got != meta["weights_sha256"]:
        raise RuntimeError(f"{meta['model']}: the rebuilt model's weights hash {got[:16]} differs from the saved "
                           f"{meta['weights_sha256'][:16]} (work dir {workdir}); remove it to rebuild")
    example = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example_inputs(workdir))
    return model, example


def min_snr_db(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float | None:
    """The worst output's SNR in dB vs the eager fp32 reference (edgerun's own definition); None when
    the outputs cannot be compared (count or shapes differ); +inf (JSON: null + exact) when bit-exact."""
    from edgerun.core.numerics import snr_db

    if len(outputs) != len(reference):
        return None
    worst = math.inf
    for a, e in zip(outputs, reference):
        a = np.asarray(a)
        if a.size != e.size:
            return None
        worst = min(worst, snr_db(a.reshape(e.shape).astype(np.float64), e))
    return worst


def json_float(x: float | None):
    """JSON has no inf/nan: carry them as strings the report understands."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def thread_env(threads: int) -> dict[str, str]:
    """Environment that pins every common thread pool of a measured process to ``threads``."""
    t = str(threads)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "VECLIB_MAXIMUM_THREADS": t,
            "NUMEXPR_NUM_THREADS": t, "TF_NUM_INTRAOP_THREADS": t, "TF_NUM_INTEROP_THREADS": "1",
            # quieter logs from absl/TF-style runtimes (LiteRT's converter and interpreter)
            "TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}


_RESULT_FD: int | None = None


def keep_stdout_for_result() -> None:
    """Send everything printed to stdout (fd 1: converters print progress there, some from C++) to
    stderr from now on, keeping the real stdout for :func:`emit`'s one JSON line."""
    global _RESULT_FD
    sys.stdout.flush()
    _RESULT_FD = os.dup(1)
    os.dup2(2, 1)


def emit(obj: dict) -> None:
    """A worker's one result line on the real stdout (its logs go to stderr)."""
    line = (json.dumps(obj) + "\n").encode()
    sys.stdout.flush()
    fd = 1 if _RESULT_FD is None else _RESULT_FD
    while line:
        line = line[os.write(fd, line):]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
