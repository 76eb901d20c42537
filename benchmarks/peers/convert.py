"""One conversion each: a work directory's model, for one peer and one scheme, into ``out_dir``.

Run by ``worker.py convert`` in a fresh process of the right venv (edgerun: edgerun's venv; ONNX Runtime
and LiteRT: the peer venv). Every converter starts from the work directory's weights (rebuilt and
hash-checked by :func:`common.load_model`) and, when it calibrates, from the same ``calibration.npz``.
Each returns ``{"file", "bytes", "method", "notes", "check_snr_db"}``: the file to run, what was done
and the SNR of one run of it on the example (a load-and-run check, not the measurement).

* **edgerun**: ``export_model(spec, "host", scheme, out_dir, options=ExportOptions(calibration=...))`` with
  the spec from the work directory's factory (``load_factory("edgerun_peers_model:build")``). A program that
  fails edgerun's own verification is kept and measured; the failure is returned as ``verification_failed``.
* **ONNX Runtime**: ``torch.onnx.export`` (the dynamo exporter; the TorchScript one if that fails, noted),
  then ``quant_pre_process`` and ``quantize_static`` (QDQ, per-channel int8 weights, int8 activations,
  MinMax over the 16 calibration samples) or ``quantize_dynamic`` (per-channel int8 weights).
* **LiteRT**: ``litert_torch.convert`` for fp32; int8 through litert-torch's own PT2E quantizer
  (``litert_torch.quantize.pt2e_quantizer.PT2EQuantizer``, symmetric per-channel weights): static
  calibrated on the 16 samples, or dynamic; then ``litert_torch.convert(..., quant_config=QuantConfig(...))``.
  When the PT2E dynamic program does not load (measured with litert-torch 0.10.0: the converter's
  DYNAMIC mode quantizes an ``nn.Embedding`` table with a non-zero zero point, which TFLite's
  ``EMBEDDING_LOOKUP`` refuses), the fp32 ``.tflite`` is quantized instead with ai-edge-quantizer's
  ``dynamic_wi8_afp32`` recipe (LiteRT's own dynamic-range int8, per-channel weights) and the
  PT2E error is kept in ``notes``.
"""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from common import FACTORY_MODULE, calibration_inputs, example_inputs, log, min_snr_db, reference_outputs


def _fresh(out_dir: Path) -> Path:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    return out_dir


def _short(exc: BaseException, limit: int = 800) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " …"


# ------------------------------------------------------------------------------------------ edgerun


def convert_edgerun(workdir: Path, scheme: str, out_dir: Path) -> dict:
    from edgerun.core.artifact import read_manifest
    from edgerun.export import VerificationFailed, export_model
    from edgerun.export.pipeline import ExportOptions
    from edgerun.export.recipes import parse_recipe
    from edgerun.export.zoo import load_factory

    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    spec = load_factory(f"{FACTORY_MODULE}:build")
    art = _fresh(out_dir) / "artifact"
    notes: list[str] = []
    failed = None
    # The shared calibration file goes only to recipes that run calibration inputs: export refuses a
    # --calibration that would be ignored (fp32, dynamic quantization).
    calibrates = parse_recipe(scheme).uses_calibration
    options = ExportOptions(calibration=str(workdir / "calibration.npz") if calibrates else None)
    try:
        manifest = export_model(spec, "host", scheme, art, options=options,
                                on_warning=lambda w: notes.append(w))
    except VerificationFailed as exc:
        failed = str(exc)
        manifest = read_manifest(art)
    worst = [o.snr_db for o in (manifest.verification.outputs if manifest.verification else ())]
    return {"file": str(manifest.pte_path), "bytes": manifest.pte_bytes, "artifact": str(art),
            "method": f"edgerun export host {scheme} (XNNPACK)", "notes": notes,
            "recipe_hash": manifest.recipe_hash, "verification_failed": failed,
            "check_snr_db": min(worst) if worst else None,
            "export_seconds": manifest.export_seconds}


# ------------------------------------------------------------------------------------- ONNX Runtime


def _onnx_feeds(session, inputs: list[np.ndarray]) -> dict:
    return {i.name: x for i, x in zip(session.get_inputs(), inputs)}


def _onnx_check(path: Path, workdir: Path) -> float | None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return min_snr_db(sess.run(None, _onnx_feeds(sess, example_inputs(workdir))), reference_outputs(workdir))


def _onnx_bytes(out_dir: Path, stem: str) -> int:
    # a model over 2 GB keeps its weights in a side file: count it
    return sum(p.stat().st_size for p in out_dir.iterdir() if p.name.startswith(stem))


def convert_onnx(workdir: Path, scheme: str, out_dir: Path) -> dict:
    import torch
    from common import load_model

    out_dir = _fresh(out_dir)
    model, example = load_model(workdir)
    fp32 = out_dir / "fp32.onnx"
    names_in = [f"input_{i}" for i in range(len(example))]
    notes: list[str] = []
    method = "torch.onnx.export (dynamo)"
    try:
        torch.onnx.export(model, example, str(fp32), dynamo=True, input_names=names_in, external_data=False)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"the dynamo exporter failed ({_short(exc, 300)}); used the TorchScript exporter")
        method = "torch.onnx.export (TorchScript)"
        torch.onnx.export(model, example, str(fp32), dynamo=False, input_names=names_in)
    if scheme == "fp32":
        return {"file": str(fp32), "bytes": _onnx_bytes(out_dir, "fp32.onnx"), "method": method, "notes": notes,
                "check_snr_db": _onnx_check(fp32, workdir)}

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_dir / "pre.onnx"
    try:  # ORT's recommended pre-processing: symbolic shapes + graph optimisation before quantizing
        quant_pre_process(str(fp32), str(pre))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"quant_pre_process failed ({_short(exc, 300)}); quantized the exported model as it is")
        pre = fp32
    out = out_dir / f"{scheme}.onnx"
    if scheme == "int8":
        samples = calibration_inputs(workdir)

        class Reader(CalibrationDataReader):
            """The work directory's 16 calibration samples, fed by the model's own input names."""

            def __init__(self):
                import onnxruntime as ort

                names = [i.name for i in ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()]
                self._it = iter([dict(zip(names, s)) for s in samples])

            def get_next(self):
                return next(self._it, None)

        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        method += f" + quantize_static (QDQ, per-channel int8 weights, int8 activations, MinMax, {len(samples)} samples)"
    elif scheme == "int8-dynamic":
        quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
        method += " + quantize_dynamic (per-channel int8 weights)"
    else:
        raise ValueError(f"no ONNX Runtime recipe for scheme {scheme!r}")
    if pre != fp32:
        pre.unlink(missing_ok=True)
    return {"file": str(out), "bytes": _onnx_bytes(out_dir, out.name), "method": method, "notes": notes,
            "check_snr_db": _onnx_check(out, workdir)}


# ------------------------------------------------------------------------------------------- LiteRT


def litert_feed(interpreter, inputs: list[np.ndarray]) -> None:
    """Set the interpreter's inputs: cast to its dtypes (int64 ids become int32: the converter narrows
    64-bit I/O), quantized when an input is itself int8/uint8 with a scale."""
    for d, x in zip(interpreter.get_input_details(), inputs):
        scale, zero = d["quantization"]
        if scale and np.issubdtype(d["dtype"], np.integer) and x.dtype.kind == "f":
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        interpreter.set_tensor(d["index"], np.ascontiguousarray(x.reshape(d["shape"]).astype(d["dtype"])))


def litert_outputs(interpreter) -> list[np.ndarray]:
    """The outputs in signature order, dequantized when the program returns int8/uint8."""
    details = interpreter.get_output_details()
    runner = None
    try:  # order outputs by the signature's output_0, output_1 ... when there is a signature
        sig = interpreter.get_signature_list()
        if sig:
            key = next(iter(sig))
            names = sig[key]["outputs"]
            runner = interpreter.get_signature_runner(key)
            index = {v["index"]: k for k, v in runner.get_output_details().items()}
            details = sorted(details, key=lambda d: names.index(index[d["index"]]) if d["index"] in index else 0)
    except Exception:  # noqa: BLE001 - an older interpreter without signatures: keep tensor order
        pass
    outs = []
    for d in details:
        y = interpreter.get_tensor(d["index"])
        scale, zero = d["quantization"]
        if scale and np.issubdtype(y.dtype, np.integer):
            y = (y.astype(np.float32) - zero) * scale
        outs.append(y)
    return outs


def _litert_check(path: Path, workdir: Path) -> float | None:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    litert_feed(it, example_inputs(workdir))
    it.invoke()
    return min_snr_db(litert_outputs(it), reference_outputs(workdir))


def _litert_fp32(model, example, path: Path) -> None:
    import litert_torch

    litert_torch.convert(model, example).export(str(path))


def convert_litert(workdir: Path, scheme: str, out_dir: Path) -> dict:
    import torch
    from common import load_model

    out_dir = _fresh(out_dir)
    model, example = load_model(workdir)
    notes: list[str] = []
    if scheme == "fp32":
        path = out_dir / "fp32.tflite"
        _litert_fp32(model, example, path)
        return {"file": str(path), "bytes": path.stat().st_size, "method": "litert_torch.convert", "notes": notes,
                "check_snr_db": _litert_check(path, workdir)}
    if scheme not in ("int8", "int8-dynamic"):
        raise ValueError(f"no LiteRT recipe for scheme {scheme!r}")

    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = scheme == "int8-dynamic"
    path = out_dir / f"{scheme}.tflite"
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    samples = calibration_inputs(workdir)
    used = samples[:1] if dynamic else samples  # as edgerun does: dynamic observers need one pass only
    method = (f"litert_torch PT2EQuantizer ({'dynamic' if dynamic else 'static'}, per-channel int8 weights"
              + ("" if dynamic else f", {len(used)} calibration samples") + ") + litert_torch.convert")
    try:
        captured = torch.export.export(model, example).module()
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for s in used:
                prepared(*[torch.from_numpy(np.ascontiguousarray(x)) for x in s])
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
        snr = _litert_check(path, workdir)
        return {"file": str(path), "bytes": path.stat().st_size, "method": method, "notes": notes,
                "check_snr_db": snr}
    except Exception as exc:  # noqa: BLE001
        if not dynamic:
            raise
        notes.append(f"PT2E dynamic failed: {_short(exc, 500)}")
        log(f"LiteRT PT2E dynamic failed ({_short(exc, 200)}); ai-edge-quantizer dynamic_wi8_afp32 instead")
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer import recipe

    fp32 = out_dir / "fp32.tflite"
    _litert_fp32(model, example, fp32)
    q = aeq.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize().export_model(str(path), overwrite=True)
    fp32.unlink(missing_ok=True)
    return {"file": str(path), "bytes": path.stat().st_size, "notes": notes,
            "method": "litert_torch.convert + ai-edge-quantizer dynamic_wi8_afp32 (PT2E dynamic fallback)",
            "check_snr_db": _litert_check(path, workdir)}


CONVERTERS = {"edgerun": convert_edgerun, "onnxruntime": convert_onnx, "litert": convert_litert}


def convert(peer: str, workdir: Path, scheme: str, out_dir: Path) -> dict:
    started = time.monotonic()
    try:
        result = CONVERTERS[peer](Path(workdir), scheme, Path(out_dir))
        return {"ok": True, **result, "seconds": round(time.monotonic() - started, 2)}
    except Exception as exc:  # noqa: BLE001 - the parent records it in the cell and goes on
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": _short(exc, 2000), "seconds": round(time.monotonic() - started, 2)}
