"""Build each model once, in edgerun's venv: weights, example, calibration, eager reference.

Runs in a worker process (``worker.py prepare MODEL``). The model comes from edgerun's own resolver
(``edgerun.export.zoo.get_model``: a zoo name or ``package.module:factory``); its work directory is
``EDGERUN_HOME/cache/benchmarks/peers/<model>-<first 12 of the weights sha256>/`` (layout in
:mod:`common`), so the same weights always land in the same place and every converter reads them
from there.

Calibration: the 16 inputs edgerun's export itself would draw for this model without a
``--calibration`` file (``edgerun.export.inputs.generated_like`` with the export's seed + 1: the
example first, then floats ~ N(0, 1) and integer inputs inside the range the graph shows -- token ids
anywhere in their embedding's rows), or the first 16 training samples for a model with a dataset.
They are written as a ``.npz`` that ``ExportOptions(calibration=...)`` takes as it is, and that the
ONNX Runtime and LiteRT converters read the same samples from.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from common import CALIBRATION_SAMPLES, FACTORY_MODULE, HERE, SEED, log, safe_name, state_dict_sha256

LAYOUT = 1

FACTORY_TEXT = '''"""Written by benchmarks/peers (do not edit): {model!r} with the weights saved beside this file.

``build()`` rebuilds the definition through edgerun's zoo, loads ``weights.pt`` over it and checks the
weights' sha256 ({sha}), so every converter starts from the same weights."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build():
    if {peers_dir!r} not in sys.path:
        sys.path.insert(0, {peers_dir!r})
    from common import load_model

    return load_model(HERE)
'''


def _flatten(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"the model returned a {type(out).__name__}; expected tensors")


def _np(t) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _calibration(spec, model, example) -> tuple[list[tuple], dict]:
    """edgerun's own calibration draw for a model without a calibration file (see the module doc)."""
    import torch
    from edgerun.export.inputs import generated_like, input_ranges

    if spec.dataset is not None:
        x = spec.dataset.load()["train"][0][:CALIBRATION_SAMPLES]
        return ([(torch.as_tensor(x[n]),) for n in range(len(x))],
                {"source": f"dataset:{spec.dataset.name}", "samples": len(x)})
    ranges = input_ranges(torch.export.export(model, tuple(example)), example)
    samples = generated_like(example, CALIBRATION_SAMPLES, SEED + 1, ranges)
    rng = [None if r is None else {"low": r.low, "high": r.high, "embedding_rows": r.embedding_rows}
           for r in ranges]
    return samples, {"source": "generated (edgerun.export.inputs.generated_like, seed 1)",
                     "samples": len(samples), "ranges": rng}


def write_factory(workdir: Path, model: str, sha: str) -> None:
    text = FACTORY_TEXT.format(model=model, sha=sha[:16], peers_dir=str(HERE))
    path = workdir / f"{FACTORY_MODULE}.py"
    if not path.is_file() or path.read_text() != text:  # the repository may have moved
        path.write_text(text)


def prepare(model_name: str, root: Path) -> dict:
    """Make (or find) the work directory of ``model_name``; returns its meta.json content + ``workdir``."""
    import torch
    from edgerun.export.zoo import get_model

    spec = get_model(model_name)
    if type(spec).__name__ == "LLMSpec":
        raise ValueError(f"{model_name} is an LLM: use benchmarks/llm_vs_llamacpp.py for LLMs")
    started = time.monotonic()
    model, example = spec.build()
    model.eval()
    sha = state_dict_sha256(model.state_dict())
    workdir = root / f"{safe_name(model_name)}-{sha[:12]}"
    meta_path = workdir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("layout") == LAYOUT and meta.get("weights_sha256") == sha:
            write_factory(workdir, model_name, sha)
            return {**meta, "workdir": str(workdir), "reused": True}
    tmp = workdir.with_name(workdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "example").mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "weights.pt")
    try:  # a fast way back for the eager workers; user models with local classes may not pickle
        torch.save(model, tmp / "model.pt")
    except Exception as exc:  # noqa: BLE001
        log(f"{model_name}: the module does not pickle ({type(exc).__name__}); workers rebuild it")
    ex = [_np(t) for t in example]
    np.savez(tmp / "example.npz", **{f"input_{i}": a for i, a in enumerate(ex)})
    for i, a in enumerate(ex):
        np.save(tmp / "example" / f"input_{i}.npy", a)
    samples, calib = _calibration(spec, model, example)
    stacked = {f"input_{i}": np.stack([_np(s[i]) for s in samples]) for i in range(len(example))}
    np.savez(tmp / "calibration.npz", **stacked)
    with torch.inference_mode():
        outputs = [_np(t) for t in _flatten(model(*example))]
    np.savez(tmp / "reference.npz", **{f"output_{j}": o for j, o in enumerate(outputs)})
    meta = {
        "layout": LAYOUT, "model": model_name, "spec": spec.to_json(), "weights_sha256": sha,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in ex],
        "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
        "calibration": {**calib, "file": "calibration.npz"}, "seed": SEED, "torch": torch.__version__,
        "pickled_module": (tmp / "model.pt").is_file(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.monotonic() - started, 2),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if workdir.exists():
        shutil.rmtree(workdir)
    tmp.rename(workdir)
    write_factory(workdir, model_name, sha)
    return {**meta, "workdir": str(workdir), "reused": False}
