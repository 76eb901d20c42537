"""``export_model``: model spec -> verified, self-describing artifact directory.

Stages (each failure names its stage): resolve -> load model -> export (torch.export) ->
quantize -> lower (to_edge_transform_and_lower + to_executorch) -> write -> verify.
The artifact is assembled in a temporary sibling directory and renamed into place at the end,
so a half-written artifact never looks complete; a directory that is not an edgerun artifact is
never overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgerun.core.artifact import (
    MANIFEST_NAME, STATUS_FAILED, STATUS_OK, Calibration, DatasetSplit, Manifest, ModelRef, Operators, SchemeRef,
    TargetRef, TaskAccuracy, TensorSpec, TestVector, Thresholds, Verification, sha256_file, thresholds_failures,
    write_manifest,
)
from edgerun.core.errors import EdgerunError, UsageError
from edgerun.core.version import edgerun_version
from edgerun.core.numerics import aggregate, compare_outputs

from .errors import ExportError, VerificationFailed
from .program import describe_program
from .recipe import recipe_identity
from .schemes import Scheme, make_scheme
from .targets import Target, get_target
from .zoo import ModelSpec, get_model

log = logging.getLogger("edgerun.export")

Stage = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    vectors: int = 4                  # test vectors written and verified
    calibration: str | None = None    # .npy/.npz file of calibration inputs (else dataset or generated)
    seed: int = 0
    overwrite: bool = True            # replace an existing *artifact* at out_dir

    def __post_init__(self) -> None:
        if self.vectors < 1:
            raise ValueError(f"vectors must be at least 1, got {self.vectors}")


def default_out_dir(model: str, target: str, scheme: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")
    return Path("artifacts") / f"{safe}-{target}-{scheme}"


@contextlib.contextmanager
def _stage(name: str, on_stage: Stage | None):
    if on_stage:
        on_stage(name)
    log.debug("stage: %s", name)
    try:
        yield
    except EdgerunError:
        raise
    except Exception as exc:
        raise ExportError(f"{type(exc).__name__}: {_short(exc)}", stage=name,
                          hint=_hint_for(name, exc)) from exc


def _short(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _hint_for(stage: str, exc: BaseException) -> str | None:
    text = str(exc)
    if stage == "export" and ("data-dependent" in text or "Could not guard" in text or "GuardOnDataDependent" in text
                              or "control flow" in text.lower()):
        return ("torch.export needs a graph without Python control flow that depends on tensor values: "
                "use torch.cond / torch.where, or move the branch out of forward().")
    if stage == "export":
        return "torch.export could not trace the model; run with --debug for the full trace."
    if stage == "quantize":
        return "Try another scheme (e.g. fp32) to see whether quantization is the problem."
    if stage == "lower":
        return "Try --target portable to lower without a delegate and see which operator is the problem."
    return None


# ---------------------------------------------------------------------------------------------
# inputs: example, generated, dataset, user calibration file


def _flatten(outputs: Any) -> list:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(outputs)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _generated_like(example: Sequence, count: int, seed: int) -> list[tuple]:
    """Inputs shaped like the example: float ~ N(0, 1); integers uniform in [0, max(example)]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    samples = [tuple(t.clone() for t in example)]
    while len(samples) < count:
        sample = []
        for t in example:
            if t.is_floating_point():
                sample.append(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            elif t.dtype == torch.bool:
                sample.append(torch.randint(0, 2, t.shape, generator=gen).bool())
            else:
                high = int(t.max().item()) + 1 if t.numel() else 1
                sample.append(torch.randint(0, max(high, 1), t.shape, generator=gen, dtype=t.dtype))
        samples.append(tuple(sample))
    return samples


def _dataset_samples(x, count: int) -> list[tuple]:
    return [(x[i : i + 1].clone(),) for i in range(min(count, len(x)))]


def load_calibration_file(path: str, example: Sequence) -> list[tuple]:
    """Calibration inputs from ``.npy`` (one input: ``[N, *shape]`` or ``[N, *shape[1:]]`` for batch 1)
    or ``.npz`` (keys ``input_0``, ``input_1`` ... in input order, each stacked on dim 0)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"calibration file {path} does not exist.", stage="quantize")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise ExportError(f"calibration file {path} is not a readable .npy/.npz file: {exc}.",
                          stage="quantize") from exc
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        keys = [f"input_{i}" for i in range(len(example))]
        missing = [k for k in keys if k not in loaded.files]
        if missing:
            raise ExportError(f"calibration file {path} lacks {', '.join(missing)}; it has {', '.join(loaded.files)}.",
                              stage="quantize", hint="Name the arrays input_0, input_1, ... in the model's input order.")
        arrays = [loaded[k] for k in keys]
    if len(arrays) != len(example):
        raise ExportError(f"calibration file {path} holds {len(arrays)} input(s); the model takes {len(example)}.",
                          stage="quantize")
    per_input: list[list] = []
    counts = set()
    for i, (arr, ex) in enumerate(zip(arrays, example)):
        want = tuple(ex.shape)
        if tuple(arr.shape[1:]) == want:          # [N, *shape]
            samples = [arr[n] for n in range(arr.shape[0])]
        elif want and want[0] == 1 and tuple(arr.shape[1:]) == want[1:]:  # [N, *shape[1:]] for batch 1
            samples = [arr[n : n + 1] for n in range(arr.shape[0])]
        else:
            raise ExportError(
                f"calibration file {path}: input {i} has shape {list(arr.shape)}; expected [N, {', '.join(map(str, want))}] "
                f"(N samples of the model's input shape {list(want)}).", stage="quantize")
        counts.add(len(samples))
        per_input.append([torch.from_numpy(np.ascontiguousarray(s)).to(ex.dtype) for s in samples])
    if len(counts) != 1 or 0 in counts:
        raise ExportError(f"calibration file {path}: inputs have different or zero sample counts {sorted(counts)}.",
                          stage="quantize")
    return [tuple(col) for col in zip(*per_input)]


# ---------------------------------------------------------------------------------------------
# quantize + lower


def _export(model, example):
    import torch

    return torch.export.export(model, tuple(example))


def _quantize(model, example, scheme: Scheme, calibration: list[tuple]):
    """Return (exported program to lower, quantization facts for the manifest)."""
    import torch

    if scheme.name in ("int8", "int8-dynamic"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        dynamic = scheme.name == "int8-dynamic"
        quantizer = XNNPACKQuantizer()
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=scheme.per_channel, is_dynamic=dynamic))
        captured = _export(model, example).module()
        prepared = prepare_pt2e(captured, quantizer)
        used = calibration if not dynamic else calibration[:1]
        with torch.no_grad():
            for sample in used:
                prepared(*sample)
        converted = convert_pt2e(prepared)
        facts = {"calibration_samples": 0 if dynamic else len(used)}
        return _export(converted, example), facts
    if scheme.name == "8da4w":
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.utils import unwrap_tensor_subclass

        gs = scheme.group_size
        from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

        def quantizable(m, fqn: str = "") -> bool:
            # MultiheadAttention's out_proj is applied through F.multi_head_attention_forward with
            # its raw weight, which a quantized tensor subclass cannot stand in for (torch says so
            # by the class name); PerGroup needs the input width to be a multiple of the group.
            return (isinstance(m, torch.nn.Linear) and not isinstance(m, NonDynamicallyQuantizableLinear)
                    and m.in_features % gs == 0)

        eligible = [n for n, m in model.named_modules() if quantizable(m)]
        if not eligible:
            raise ExportError(
                f"scheme 8da4w found no linear layer whose input width is a multiple of group_size={gs}.",
                stage="quantize", hint="Use a smaller --group-size, or int8 / int8-dynamic for this model.")
        qmodel = copy.deepcopy(model)
        quantize_(qmodel, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                weight_granularity=PerGroup(gs)),
                  quantizable)
        unwrap_tensor_subclass(qmodel)
        total = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        return _export(qmodel, example), {"quantized_linear_layers": len(eligible), "linear_layers": total}
    raise UsageError(f"no quantization recipe for scheme {scheme.name!r}")  # registry and recipes out of step


def _lower(exported, target: Target, scheme: Scheme):
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(
        exported,
        partitioner=target.partitioners(scheme),
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        generate_etrecord=True,
    )
    return edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))


# ---------------------------------------------------------------------------------------------
# verification with executorch's own runtime


def _run_program(pte_path: Path, samples: Sequence[tuple]) -> list[list[np.ndarray]]:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte_path))
    method = program.load_method("forward")
    results = []
    for sample in samples:
        outs = method.execute(list(sample))
        results.append([np.asarray(o.detach().numpy() if hasattr(o, "detach") else o) for o in outs])
    return results


def _task_accuracy(model, pte_path: Path, x, y) -> TaskAccuracy:
    import torch

    with torch.no_grad():
        eager_pred = torch.cat([model(x[i : i + 1]) for i in range(len(x))]).argmax(1).numpy()
    outs = _run_program(pte_path, _dataset_samples(x, len(x)))
    pte_pred = np.array([o[0].argmax(1)[0] for o in outs])
    labels = y.numpy()
    return TaskAccuracy(samples=int(len(labels)), eager_fp32=float(np.mean(eager_pred == labels)),
                        program=float(np.mean(pte_pred == labels)),
                        delta_pp=float(100.0 * (np.mean(pte_pred == labels) - np.mean(eager_pred == labels))))


def verify_artifact(art_dir: Path, manifest: Manifest, thresholds: Thresholds) -> Verification:
    """Run the artifact's program on its test vectors and compare with the stored eager outputs."""
    manifest = dataclasses.replace(manifest, path=Path(art_dir))
    vectors = manifest.load_test_vectors()
    actual = _run_program(manifest.pte_path, [tuple(_as_tensor(a) for a in v.inputs) for v in vectors])
    per_vector = [compare_outputs(a, v.outputs) for a, v in zip(actual, vectors)]
    summary = aggregate(per_vector)
    failures = thresholds_failures(summary, thresholds)
    return Verification(runtime="executorch pybindings (host)", thresholds=thresholds, outputs=tuple(summary),
                        passed=not failures, failures=tuple(failures))


def _as_tensor(arr: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------------------------
# the artifact directory


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check we may write ``out_dir``; return a fresh temporary sibling to assemble into."""
    out_dir = out_dir.expanduser()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"output path {out_dir} exists and is not a directory.", stage="write")
        is_artifact = (out_dir / MANIFEST_NAME).is_file()
        if any(out_dir.iterdir()) and not is_artifact:
            raise ExportError(f"output directory {out_dir} is not empty and is not an edgerun artifact; "
                              "refusing to overwrite it.", stage="write", hint="Choose another -o directory.")
        if is_artifact and not overwrite:
            raise ExportError(f"output directory {out_dir} already holds an artifact.", stage="write",
                              hint="Pass --overwrite or choose another -o directory.")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write to output directory {out_dir}: {exc.strerror or exc}.", stage="write",
                          hint="Choose a writable -o directory.") from exc


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished artifact into place (rename is atomic within a filesystem)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_vectors(tmp: Path, samples: Sequence[tuple], outputs: Sequence[list]) -> list[TestVector]:
    vectors = []
    for k, (sample, outs) in enumerate(zip(samples, outputs)):
        d = tmp / "vectors" / f"{k:03d}"
        d.mkdir(parents=True)
        ins = []
        for i, t in enumerate(sample):
            np.save(d / f"input_{i}.npy", t.detach().numpy())
            ins.append(f"vectors/{k:03d}/input_{i}.npy")
        outs_rel = []
        for j, t in enumerate(outs):
            np.save(d / f"output_{j}.npy", t.detach().numpy())
            outs_rel.append(f"vectors/{k:03d}/output_{j}.npy")
        vectors.append(TestVector(inputs=tuple(ins), outputs=tuple(outs_rel)))
    return vectors


def _save_dataset(tmp: Path, name: str, x, y, example: Sequence) -> DatasetSplit:
    """The held-out split as the program takes it: ``dataset/inputs.npy`` ``[N, *input_shape]`` (each
    sample exactly the program's single input, e.g. ``[N, 1, 1, 8, 8]``) and ``dataset/labels.npy``
    (int64 ``[N]``), for task accuracy computed from outputs run on a device."""
    samples = _dataset_samples(x, len(x))
    if len(example) != 1 or any(tuple(s[0].shape) != tuple(example[0].shape) for s in samples):
        raise ExportError(f"the held-out split of {name} does not fit the program's input: {len(example)} "
                          f"input(s), example shape {[list(t.shape) for t in example]}, sample shape "
                          f"{list(samples[0][0].shape) if samples else None}.", stage="write",
                          hint="A dataset's test inputs must be stacked samples of the model's single input.")
    inputs = np.stack([s[0].detach().numpy() for s in samples])
    labels = np.asarray(y.detach().numpy() if hasattr(y, "detach") else y).astype(np.int64).reshape(-1)
    if len(labels) != len(inputs):
        raise ExportError(f"the held-out split of {name} has {len(inputs)} inputs but {len(labels)} labels.",
                          stage="write")
    (tmp / "dataset").mkdir()
    np.save(tmp / "dataset" / "inputs.npy", np.ascontiguousarray(inputs))
    np.save(tmp / "dataset" / "labels.npy", labels)
    return DatasetSplit(name=name, split="test", inputs="dataset/inputs.npy", labels="dataset/labels.npy",
                        samples=int(len(labels)))


def _np_dtype(t) -> str:
    return str(t.detach().numpy().dtype) if t.numel() else str(t.dtype).replace("torch.", "")


def _versions() -> dict:
    import executorch.version
    import torch

    out = {"edgerun": edgerun_version(), "executorch": executorch.version.__version__.split("+")[0],
           "torch": torch.__version__}
    try:
        import torchao

        out["torchao"] = torchao.__version__
    except Exception:  # torchao is optional for fp32/int8
        pass
    return out


def export_model(
    model: str,
    target: str,
    scheme: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    scheme_options: dict | None = None,
    options: ExportOptions | None = None,
    thresholds: dict | None = None,
    on_stage: Stage | None = None,
) -> Manifest:
    """Export ``model`` for ``target`` with ``scheme``; return the manifest (also written to disk).

    Raises :class:`ExportError` naming the failed stage, or :class:`VerificationFailed` after the
    artifact was written with ``status: "failed"``.
    """
    import torch

    started = time.monotonic()
    options = options or ExportOptions()
    with _stage("resolve", on_stage):
        tgt = get_target(target)
        scheme_name = scheme or tgt.default_scheme
        tgt.check_scheme(scheme_name)
        sch = make_scheme(scheme_name, **(scheme_options or {}))
        spec: ModelSpec = get_model(model)
        limits = Thresholds.for_scheme(sch, **(thresholds or {}))
        identity = recipe_identity(spec, tgt, sch, calibration=options.calibration, seed=options.seed,
                                   vectors=options.vectors)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model, tgt.name, sch.name)
    tmp = _prepare_out_dir(out, options.overwrite)
    try:
        with _stage("load model", on_stage):
            module, example = spec.build()
            dataset = spec.dataset.load() if spec.dataset else None
            with torch.no_grad():
                module(*example)  # a model that cannot run eagerly cannot be exported meaningfully
        with _stage("export", on_stage):
            exported = _export(module, example)
        quant_facts: dict = {}
        calibration: list = []
        if sch.quantized:
            with _stage("quantize", on_stage):
                if options.calibration:
                    calibration = load_calibration_file(options.calibration, example)
                elif dataset is not None:
                    calibration = _dataset_samples(dataset["train"][0], getattr(sch, "calibration_samples", 16))
                else:
                    calibration = _generated_like(example, getattr(sch, "calibration_samples", 16), options.seed + 1)
                exported, quant_facts = _quantize(module, example, sch, calibration)
        with _stage("lower", on_stage):
            program = _lower(exported, tgt, sch)
        with _stage("write", on_stage):
            pte = tmp / "model.pte"
            with open(pte, "wb") as f:
                program.write_to_file(f)
            program.get_etrecord().save(str(tmp / "model.etrecord"))
            if dataset is not None:
                samples = _dataset_samples(dataset["test"][0], options.vectors)
            else:
                samples = _generated_like(example, options.vectors, options.seed)
            with torch.no_grad():
                eager_outputs = [_flatten(module(*s)) for s in samples]
            vectors = _save_vectors(tmp, samples, eager_outputs)
            facts = describe_program(program.executorch_program)
            input_names = [s.arg.name for s in exported.graph_signature.input_specs
                           if s.kind.name == "USER_INPUT"]
            dataset_split = None
            if dataset is not None and spec.task == "classification":
                x, y = dataset["test"]
                dataset_split = _save_dataset(tmp, spec.dataset.name, x, y, example)
            manifest = Manifest(
                status="unverified",
                model=ModelRef(**{**spec.to_json(), "parameters": int(sum(p.numel() for p in module.parameters())),
                                  "fp32_weight_bytes": int(sum(p.numel() * 4 for p in module.parameters()))}),
                target=TargetRef(**tgt.to_json()),
                scheme=SchemeRef(name=sch.name, options=sch.options(), recipe_hash=sch.recipe_hash,
                                 facts=quant_facts),
                recipe_hash=identity.hash, recipe=identity, versions=_versions(),
                inputs=tuple(TensorSpec(name=input_names[i] if i < len(input_names) else f"input_{i}",
                                        shape=tuple(t.shape), dtype=_np_dtype(t)) for i, t in enumerate(example)),
                outputs=tuple(TensorSpec(name=f"output_{j}", shape=tuple(t.shape), dtype=_np_dtype(t))
                              for j, t in enumerate(eager_outputs[0])),
                files={"pte": "model.pte", "etrecord": "model.etrecord"},
                pte_bytes=pte.stat().st_size, pte_sha256=sha256_file(pte),
                etrecord_bytes=(tmp / "model.etrecord").stat().st_size, method=facts["method"],
                planned_memory_bytes=facts["planned_memory_bytes"], planned_buffers=tuple(facts["planned_buffers"]),
                operators=Operators.from_json(facts["operators"], "operators"), test_vectors=tuple(vectors),
                calibration=Calibration(
                    source=("file:" + str(options.calibration)) if options.calibration
                    else (spec.dataset.name if dataset is not None else "generated"),
                    samples=len(calibration)) if sch.quantized else None,
                dataset=dataset_split, path=tmp,
            )
        with _stage("verify", on_stage):
            verification = verify_artifact(tmp, manifest, limits)
            if dataset_split is not None:
                x, y = dataset["test"]
                verification = dataclasses.replace(verification, task_accuracy=_task_accuracy(module, pte, x, y))
        manifest = dataclasses.replace(manifest, verification=verification,
                                       status=STATUS_OK if verification.passed else STATUS_FAILED,
                                       export_seconds=round(time.monotonic() - started, 3))
        write_manifest(tmp, manifest)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = dataclasses.replace(manifest, path=out)
    if not verification.passed:
        raise VerificationFailed(
            f"the program disagrees with eager PyTorch: {'; '.join(verification.failures)}. "
            f"The artifact was kept at {out} and marked failed in its manifest.",
            hint="Try a gentler scheme (e.g. int8 instead of 8da4w), more calibration samples, or real "
                 "calibration data with --calibration.")
    return manifest
