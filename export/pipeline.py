"""``export_model``: model spec -> verified, self-describing artifact directory.

Stages (each failure names its stage): resolve -> load model -> export (torch.export) ->
quantize -> lower (to_edge_transform_and_lower + to_executorch, with a fallback that keeps a node
the delegate fails on out of it: :mod:`.lowering`) -> write -> verify. ``on_stage(name)`` is called
as a stage starts and ``on_stage_done(name, seconds)`` when it ends; the manifest keeps the times.
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

from . import quant_report
from .errors import ExportError, VerificationFailed
from .inputs import IntRange, generated_like, input_ranges, load_inputs_file
from . import rewrites
from .lowering import graph_facts, graph_warning, lower
from .program import describe_program
from .recipe import recipe_identity
from .schemes import Scheme, make_scheme
from .targets import Target, get_target
from .zoo import ModelSpec, get_model

log = logging.getLogger("edgerun.export")

Stage = Callable[[str], None]
StageDone = Callable[[str, float], None]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    vectors: int = 4                  # test vectors written and verified (the example is vector 0)
    calibration: str | None = None    # .npy/.npz file of calibration inputs (else dataset or generated)
    vectors_file: str | None = None   # .npy/.npz file of test inputs: vectors are the example + these
    seed: int = 0
    overwrite: bool = True            # replace an existing *artifact* at out_dir

    def __post_init__(self) -> None:
        if self.vectors < 1:
            raise ValueError(f"vectors must be at least 1, got {self.vectors}")


def default_out_dir(model: str, target: str, scheme: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")
    return Path("artifacts") / f"{safe}-{target}-{scheme}"


@contextlib.contextmanager
def _stage(name: str, on_stage: Stage | None, on_done: StageDone | None = None, times: dict | None = None):
    if on_stage:
        on_stage(name)
    log.debug("stage: %s", name)
    started = time.monotonic()
    try:
        yield
    except EdgerunError:
        raise
    except Exception as exc:
        raise ExportError(f"{type(exc).__name__}: {_short(exc)}", stage=name,
                          hint=_hint_for(name, exc)) from exc
    seconds = time.monotonic() - started
    if times is not None:
        times[name] = round(seconds, 3)
    if on_done:
        on_done(name, seconds)


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


def _dataset_samples(x, count: int) -> list[tuple]:
    return [(x[i : i + 1].clone(),) for i in range(min(count, len(x)))]


def load_calibration_file(path: str, example: Sequence, ranges: Sequence[IntRange | None] = ()) -> list[tuple]:
    """Calibration inputs from ``.npy`` (one input: ``[N, *shape]`` or ``[N, *shape[1:]]`` for batch 1)
    or ``.npz`` (keys ``input_0``, ``input_1`` ... in input order, each stacked on dim 0)."""
    return load_inputs_file(path, example, what="calibration file", stage="quantize", ranges=ranges)


def load_vectors_file(path: str, example: Sequence, ranges: Sequence[IntRange | None] = ()) -> list[tuple]:
    """A user's test inputs, in the calibration file's format."""
    return load_inputs_file(path, example, what="test vectors file", stage="load model", ranges=ranges)


# ---------------------------------------------------------------------------------------------
# quantize + lower


def _export(model, example):
    import torch

    return torch.export.export(model, tuple(example))


def _capture(model, example, target: Target):
    """torch.export, then the target's graph rewrites (export/rewrites.py)."""
    return rewrites.apply(_export(model, example), target.graph_rewrites)


def _quantize(model, example, scheme: Scheme, calibration: list[tuple], target: Target):
    """Return (exported program to lower, quantization facts for the manifest)."""
    import torch

    if scheme.name in ("int8", "int8-dynamic"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        dynamic = scheme.name == "int8-dynamic"
        quantizer = XNNPACKQuantizer()
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=scheme.per_channel, is_dynamic=dynamic))
        captured = _capture(model, example, target).module()
        prepared = prepare_pt2e(captured, quantizer)
        used = calibration if not dynamic else calibration[:1]
        with torch.no_grad():
            for sample in used:
                prepared(*sample)
        converted = convert_pt2e(prepared)
        exported = _export(converted, example)
        facts = {"calibration_samples": 0 if dynamic else len(used),
                 **quant_report.describe(scheme.name, "XNNPACKQuantizer", model, exported)}
        return exported, facts
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
            raise ExportError(_no_8da4w_layer(model, gs), stage="quantize", hint=_no_8da4w_hint(model, gs))
        qmodel = copy.deepcopy(model)
        quantize_(qmodel, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                                weight_granularity=PerGroup(gs)),
                  quantizable)
        unwrap_tensor_subclass(qmodel)
        total = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        exported = _capture(qmodel, example, target)
        return exported, {"quantized_linear_layers": len(eligible), "linear_layers": total,
                          **quant_report.describe(scheme.name, "8da4w (it quantizes linear layers only)",
                                                  model, exported)}
    raise UsageError(f"no quantization recipe for scheme {scheme.name!r}")  # registry and recipes out of step


def _linears(model) -> list:
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)
            and not isinstance(m, NonDynamicallyQuantizableLinear)]


def _no_8da4w_layer(model, gs: int) -> str:
    import torch

    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return "this model has no nn.Linear layers; 8da4w quantizes only linear layers."
    if not _linears(model):
        return ("this model's only linear layers are attention output projections (nn.MultiheadAttention's "
                "out_proj), which 8da4w cannot quantize; it quantizes only other linear layers.")
    widths = sorted({m.in_features for m in _linears(model)})
    return (f"scheme 8da4w found no linear layer whose input width is a multiple of group_size={gs} "
            f"(input widths: {', '.join(map(str, widths))}).")


def _no_8da4w_hint(model, gs: int) -> str:
    linears = _linears(model)
    fitting = [g for g in (256, 128, 64, 32, 16, 8, 4, 2) if g < gs and any(m.in_features % g == 0 for m in linears)]
    if linears and fitting:
        return f"Use --group-size {fitting[0]}, or int8 / int8-dynamic for this model."
    return "Use int8 or int8-dynamic for this model."


def _program_loads(program) -> None:
    """Load the program's method in ExecuTorch's runtime: a delegate may refuse its graph only then."""
    from executorch.runtime import Runtime

    Runtime.get().load_program(bytes(program.buffer)).load_method("forward")


#: a program lowered with nodes kept off the delegate must agree this well with the graph it was
#: lowered from (the same quantized graph run eagerly: only rounding differs); a wrong cut is far off
AGREEMENT_COSINE = 0.99


class ProgramDisagrees(RuntimeError):
    """A lowered program loads but its outputs disagree with the graph it was lowered from."""


def _program_agrees(exported, example):
    """A check that runs a program on ``example`` and raises :class:`ProgramDisagrees` unless each
    output agrees with ``exported`` run eagerly (cosine >= :data:`AGREEMENT_COSINE`)."""
    reference: list = []

    def check(program) -> None:
        import torch
        from executorch.runtime import Runtime

        if not reference:
            with torch.no_grad():
                # a copy: running the graph may update its buffers, which later attempts lower
                module = copy.deepcopy(exported).module()
                reference.extend(np.asarray(t.detach().numpy()) for t in _flatten(module(*example)))
        method = Runtime.get().load_program(bytes(program.buffer)).load_method("forward")
        outs = method.execute([t.clone() for t in example])
        actual = [np.asarray(o.detach().numpy() if hasattr(o, "detach") else o) for o in outs]
        bad = [f"output {m.index}: cosine {m.cosine:.4f}" for m in compare_outputs(actual, reference)
               if not m.cosine >= AGREEMENT_COSINE]
        if bad:
            raise ProgramDisagrees(f"the program loads but disagrees with the graph it was lowered from "
                                   f"({'; '.join(bad)} < {AGREEMENT_COSINE})")

    return check


def _lower(exported, target: Target, scheme: Scheme, example=None):
    """-> :class:`.lowering.Lowered` (the program, the graph it came from, what was kept off the delegate)."""
    label = " + ".join(b.upper() for b in target.backends) or "the delegate"
    return lower(exported, lambda: target.partitioners(scheme), backend_label=label,
                 load_check=_program_loads if target.backends else None,
                 agreement_check=_program_agrees(exported, example) if target.backends and example else None)


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
        _remove_stale_partials(out_dir)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write to output directory {out_dir}: {exc.strerror or exc}.", stage="write",
                          hint="Choose a writable -o directory.") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_partials(out_dir: Path) -> list[Path]:
    """Remove what an export of ``out_dir`` killed mid-way left beside it: ``.NAME.partial-PID-*`` and
    ``.NAME.old-PID`` directories whose process is gone. A live export's directories are left alone."""
    removed = []
    for p in out_dir.parent.glob(f".{out_dir.name}.*"):
        rest = p.name[len(out_dir.name) + 2:]
        kind, _, tail = rest.partition("-")
        pid_text = tail.split("-", 1)[0]
        if kind not in ("partial", "old") or not pid_text.isdigit() or not p.is_dir() or p.is_symlink():
            continue
        if not _pid_alive(int(pid_text)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d directory(ies) left by an interrupted export of %s", len(removed), out_dir)
    return removed


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
    model: "str | ModelSpec",
    target: str,
    scheme: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    scheme_options: dict | None = None,
    options: ExportOptions | None = None,
    thresholds: dict | None = None,
    on_stage: Stage | None = None,
    on_stage_done: StageDone | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Manifest:
    """Export ``model`` for ``target`` with ``scheme``; return the manifest (also written to disk).

    ``on_stage(name)`` / ``on_stage_done(name, seconds)`` report progress; ``on_warning(text)`` is
    called as soon as a warning is known (they are all in the manifest's ``warnings`` too).

    Raises :class:`ExportError` naming the failed stage, or :class:`VerificationFailed` after the
    artifact was written with ``status: "failed"``.
    """
    import torch

    started = time.monotonic()
    options = options or ExportOptions()
    times: dict[str, float] = {}
    warnings: list[str] = []

    def stage(name: str):
        return _stage(name, on_stage, on_stage_done, times)

    def warn(text: str) -> None:
        warnings.append(text)
        log.debug("warning: %s", text)
        if on_warning:
            on_warning(text)

    with stage("resolve"):
        tgt = get_target(target)
        scheme_name = scheme or tgt.default_scheme
        tgt.check_scheme(scheme_name)
        sch = make_scheme(scheme_name, **(scheme_options or {}))
        spec: ModelSpec = model if isinstance(model, ModelSpec) else get_model(model)
        model = spec.name
        limits = Thresholds.for_scheme(sch, **(thresholds or {}))
        identity = recipe_identity(spec, tgt, sch, calibration=options.calibration, seed=options.seed,
                                   vectors=options.vectors, vectors_file=options.vectors_file)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model, tgt.name, sch.name)
    tmp = _prepare_out_dir(out, options.overwrite)
    try:
        with stage("load model"):
            module, example = spec.build()
            dataset = spec.dataset.load() if spec.dataset else None
            with torch.no_grad():
                module(*example)  # a model that cannot run eagerly cannot be exported meaningfully
        with stage("export"):
            exported = _capture(module, example, tgt)
            exported_nodes = sum(n.op == "call_function" for n in exported.graph.nodes)
            ranges = input_ranges(exported, example)
            user_vectors = load_vectors_file(options.vectors_file, example, ranges) if options.vectors_file else None
        quant_facts: dict = {}
        calibration: list = []
        if sch.quantized:
            with stage("quantize"):
                if options.calibration:
                    calibration = load_calibration_file(options.calibration, example, ranges)
                elif dataset is not None:
                    calibration = _dataset_samples(dataset["train"][0], getattr(sch, "calibration_samples", 16))
                else:
                    calibration = generated_like(example, getattr(sch, "calibration_samples", 16), options.seed + 1,
                                                 ranges)
                exported, quant_facts = _quantize(module, example, sch, calibration, tgt)
        with stage("lower"):
            lowered = _lower(exported, tgt, sch, example)
            program = lowered.program
            graph = graph_facts(exported_nodes, lowered.summary)
            if lowered.exclusions:
                graph["lowering_attempts"] = lowered.attempts
            for exclusion in lowered.exclusions:
                warn(exclusion.sentence())
            if graph_warning(graph):
                warn(graph_warning(graph))
        with stage("write"):
            pte = tmp / "model.pte"
            with open(pte, "wb") as f:
                program.write_to_file(f)
            program.get_etrecord().save(str(tmp / "model.etrecord"))
            fp32_bytes = int(sum(p.numel() * 4 for p in module.parameters()))
            if "layers" in quant_facts:
                _, text = quant_report.share_warning(sch.name, quant_facts["quantizer"], quant_facts["layers"],
                                                     pte.stat().st_size, fp32_bytes)
                if text:
                    warn(text)
            first = tuple(t.clone() for t in example)   # test vector 0 is always the example
            if user_vectors is not None:
                samples = [first, *user_vectors]
            elif dataset is not None:
                samples = [first, *_dataset_samples(dataset["test"][0], options.vectors - 1)]
            else:
                samples = generated_like(example, options.vectors, options.seed, ranges)
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
                                  "fp32_weight_bytes": fp32_bytes}),
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
                dataset=dataset_split, path=tmp, graph=graph, warnings=tuple(warnings),
            )
        with stage("verify"):
            verification = verify_artifact(tmp, manifest, limits)
            if dataset_split is not None:
                x, y = dataset["test"]
                verification = dataclasses.replace(verification, task_accuracy=_task_accuracy(module, pte, x, y))
        manifest = dataclasses.replace(manifest, verification=verification,
                                       status=STATUS_OK if verification.passed else STATUS_FAILED,
                                       export_seconds=round(time.monotonic() - started, 3),
                                       stage_seconds=dict(times))
        write_manifest(tmp, manifest)
        try:
            _publish(tmp, out)
        except OSError as exc:  # a mount point, a busy or foreign file system: say so, not "internal error"
            raise ExportError(f"cannot put the finished artifact in place at {out}: {exc.strerror or exc} "
                              f"(renaming {tmp.name} onto it failed).", stage="write",
                              hint="Export into a directory inside a writable file system (not onto a mount "
                                   "point itself), e.g. -o DIR/model.") from exc
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
