"""``export_model``: a model -> verified, self-describing artifact directory.

The model is a zoo name, a user factory (``package.module:factory``), or what a Python user has: an
``nn.Module`` with ``example_inputs=``, a ``(module, example_inputs)`` pair or an ``ExportedProgram``
(:mod:`.modules`). The recipe is recipe text (``int8``, ``8da4w:group_size=64``,
``my-prune:amount=0.5+int8`` with ``my-prune`` registered) or a :class:`~.recipes.RecipeChain`.

Stages (:mod:`.stages` runs them; each failure names its stage): resolve -> load model -> export
(torch.export and the target's graph rewrites) -> one stage per recipe step, named by its kind
(``prune``, ``quantize`` ...: each step's registered handler) -> lower (to_edge_transform_and_lower +
to_executorch, with a fallback that keeps a node the delegate fails on out of it: :mod:`.lowering`) ->
write -> verify. The plan is checked, and every option checked against the recipe, before any stage
runs. ``on_stage(name)`` is called as a stage starts and ``on_stage_done(name, seconds)`` when it
ends; the manifest keeps the times. The artifact is assembled in a temporary sibling directory and
renamed into place at the end, so a half-written artifact never looks complete; a directory that is
not an edgerun artifact is never overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgerun.core.artifact import (
    STATUS_FAILED, STATUS_OK, Calibration, DatasetSplit, Manifest, ModelRef, Operators, RecipeStep, SchemeRef,
    TargetRef, TaskAccuracy, TensorSpec, TestVector, Thresholds, Verification, sha256_file, thresholds_failures,
    write_manifest,
)
from edgerun.core.errors import UsageError
from edgerun.core.version import edgerun_version
from edgerun.core.numerics import aggregate, compare_outputs

from . import quant_report
from .errors import ExportError, VerificationFailed
from .inputs import IntRange, generated_like, input_ranges, load_inputs_file
from . import rewrites
from .lowering import graph_facts, graph_warning, lower
from .modules import resolve_model
from .options import ExportOptions
from .program import describe_program
from .layer_stats import change_facts, measure as measure_layers
from .recipe import recipe_identity
from .recipes import RECIPES, Recipe, RecipeChain, RecipeContext, Samples
from .stages import (OnProgress, OnStage, OnStageDone, OnWarning, Plan, Progress, Stage, Work, artifact_dir,
                     prepare_out_dir as _prepare_out_dir, publish as _publish,
                     remove_stale_partials as _remove_stale_partials)
from .targets import Target, get_target
from .zoo import ModelSpec

log = logging.getLogger("edgerun.export")

__all__ = ["export_model", "ExportOptions", "verify_artifact", "load_calibration_file", "load_vectors_file",
           "default_out_dir", "Thresholds", "_prepare_out_dir", "_publish", "_remove_stale_partials"]


def default_out_dir(model: str, target: str, scheme: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")
    recipe = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", scheme)
    return Path("artifacts") / f"{safe}-{target}-{recipe}"


# ---------------------------------------------------------------------------------------------
# inputs: example, generated, dataset, user calibration file


def _flatten(outputs: Any) -> list:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(outputs)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def output_names(outputs: Any) -> list[str]:
    """A name for each tensor :func:`_flatten` returns, in its order: a dict's keys and a named tuple's or
    dataclass's fields become the name (``scores``, ``boxes.0``, ``det.logits``), so a model returning
    ``{"scores": ..., "boxes": ...}`` keeps them in the manifest, the verification and every record;
    plain tensors, tuples and lists stay ``output_0`` ... Names are kept to ``[A-Za-z0-9_.-]``, at most
    64 characters, and made unique."""
    import torch
    from torch.utils._pytree import GetAttrKey, MappingKey, SequenceKey, tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(outputs)
    paths = [p for p, t in leaves if isinstance(t, torch.Tensor)]
    names: list[str] = []
    for j, path in enumerate(paths):
        if not any(isinstance(k, (MappingKey, GetAttrKey)) for k in path):
            names.append(f"output_{j}")
            continue
        parts = [str(k.key) if isinstance(k, MappingKey) else k.name if isinstance(k, GetAttrKey)
                 else str(k.idx) if isinstance(k, SequenceKey) else str(k) for k in path]
        name = _NAME_UNSAFE.sub("_", ".".join(parts)).strip("._")[:64] or f"output_{j}"
        names.append(name if name not in names else f"{name}_{j}")
    return names


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


def _capture(model, example, target: Target, without: tuple[str, ...] = ()):
    """torch.export, then the target's graph rewrites (export/rewrites.py) except those named in ``without``."""
    return rewrites.apply(_export(model, example), tuple(r for r in target.graph_rewrites if r not in without))


def _program_loads(program) -> None:
    """Load the program's method in ExecuTorch's runtime: a delegate may refuse its graph only then."""
    from executorch.runtime import Runtime

    Runtime.get().load_program(bytes(program.buffer)).load_method("forward")


def _program_runs(example):
    """A check that loads the program's method and executes it once on ``example``: a delegate may
    refuse its graph at load time, or only when it runs (XNNPACK: "Propagating input shapes failed"),
    and both must reach the lowering's fallback, not end the export at verification."""

    def check(program) -> None:
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(bytes(program.buffer)).load_method("forward")
        method.execute([t.clone() for t in example])

    return check


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


def _lower(exported, target: Target, scheme: Recipe, example=None):
    """-> :class:`.lowering.Lowered` (the program, the graph it came from, what was kept off the delegate)."""
    if target.lowering is not None:             # not a partitioner: the target's own lowering
        from .targets import LOWERINGS

        return LOWERINGS[target.lowering](exported, target, scheme)
    label = " + ".join(b.upper() for b in target.backends) or "the delegate"
    runs_here = bool(target.backends) and target.functional_check is None  # an NPU's program cannot run here
    return lower(exported, lambda: target.partitioners(scheme), backend_label=label,
                 load_check=(_program_runs(example) if example else _program_loads) if runs_here else None,
                 agreement_check=_program_agrees(exported, example) if runs_here and example else None)


# ---------------------------------------------------------------------------------------------
# verification with executorch's own runtime


def _run_program(pte_path: Path, samples: Sequence[tuple], data: Path | None = None) -> list[list[np.ndarray]]:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte_path), data_path=str(data) if data else None)
    method = program.load_method("forward")
    results = []
    for sample in samples:
        outs = method.execute(list(sample))
        results.append([np.asarray(o.detach().numpy() if hasattr(o, "detach") else o) for o in outs])
    return results


def _eager_accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1]) for i in range(len(x))]).argmax(1)
    return float((pred == y).float().mean())


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
    actual = _run_program(manifest.pte_path, [tuple(_as_tensor(a) for a in v.inputs) for v in vectors],
                          data=manifest.data_path)
    per_vector = [compare_outputs(a, v.outputs) for a, v in zip(actual, vectors)]
    summary = aggregate(per_vector)
    if len(manifest.outputs) == len(summary):  # the outputs' names (a dict's keys), not only their places
        summary = [dataclasses.replace(m, name=spec.name) for m, spec in zip(summary, manifest.outputs)]
    failures = thresholds_failures(summary, thresholds)
    return Verification(runtime="executorch pybindings (host)", thresholds=thresholds, outputs=tuple(summary),
                        passed=not failures, failures=tuple(failures))


def _as_tensor(arr: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------------------------
# the artifact directory


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


# ---------------------------------------------------------------------------------------------
# resolve: everything checked before any stage runs


def recipe_steps(chain: RecipeChain, facts: dict[int, dict]) -> tuple[RecipeStep, ...]:
    """The chain as the manifest records it (each step's facts from its handler)."""
    return tuple(RecipeStep(name=s.name, kind=s.kind, options=s.options(), recipe_hash=s.recipe_hash,
                            facts=facts.get(i, {})) for i, s in enumerate(chain.steps))


def scheme_ref(chain: RecipeChain, facts: dict[int, dict]) -> SchemeRef:
    """The manifest's ``scheme``: its quantize step as in schema 1, and the whole chain."""
    q = chain.quantize
    qi = next((i for i, s in enumerate(chain.steps) if s is q), None)
    return SchemeRef(name=q.name, options=q.options(), recipe_hash=chain.recipe_hash,
                     facts=facts.get(qi, {}) if qi is not None else {}, recipe=chain.spec,
                     steps=recipe_steps(chain, facts))


def _check_model_options(chain: RecipeChain, options: ExportOptions) -> None:
    if options.calibration and not chain.uses_calibration:
        takers = [n for n, c in RECIPES.items() if c.uses_calibration]
        raise UsageError(f"--calibration {options.calibration}: recipe {chain.spec!r} runs no calibration inputs, so "
                         "the file would be ignored.",
                         hint=f"Drop --calibration, or use a recipe that calibrates: {', '.join(takers)}.")


def _model_plan(chain: RecipeChain) -> Plan:
    steps = chain.stages()
    recipe_stages = [Stage(name, _step_stage(step, last=k == len(steps) - 1),
                           needs=("module", "example", "target", "ranges"), makes=("module", "exported"))
                     for k, (name, step) in enumerate(steps)]
    return Plan([
        Stage("load model", _load, needs=("spec",), makes=("module", "example", "dataset", "original")),
        Stage("export", _capture_stage, needs=("module", "example", "target", "options"),
              makes=("exported", "exported_nodes", "ranges", "user_vectors")),
        *recipe_stages,
        Stage("lower", _lower_stage, needs=("exported", "target", "chain", "example", "tmp"),
              makes=("lowered", "graph")),
        Stage("write", _write_stage, needs=("lowered", "graph", "original", "example", "dataset", "user_vectors", "ranges",
                                            "identity", "tmp"), makes=("manifest", "dataset_split")),
        Stage("verify", _verify_stage, needs=("manifest", "dataset_split", "original", "limits", "tmp", "exported"),
              makes=("verification",)),
    ], given=("spec", "target", "chain", "options", "limits", "identity", "tmp", "progress"))


# ---------------------------------------------------------------------------------------------
# the stages


def _load(w: Work) -> None:
    import torch

    w.module, w.example = w.spec.build()
    if w.spec.source == "python" and w.module.training:  # the caller's module is left as it is
        w.module = copy.deepcopy(w.module).eval()
        w.progress.warn(f"the module {w.spec.name} was in training mode (dropout, batch-norm statistics); an eval() "
                        "copy of it was exported")
    w.original = w.module
    w.dataset = w.spec.dataset.load() if w.spec.dataset else None
    with torch.no_grad():
        w.module(*w.example)  # a model that cannot run eagerly cannot be exported meaningfully


def _capture_stage(w: Work) -> None:
    w.exported = _capture(w.module, w.example, w.target)
    w.exported_nodes = sum(n.op == "call_function" for n in w.exported.graph.nodes)
    w.input_names = [s.arg.name for s in w.exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    w.ranges = input_ranges(w.exported, w.example)
    w.user_vectors = (load_vectors_file(w.options.vectors_file, w.example, w.ranges)
                      if w.options.vectors_file else None)


def _calibration(w: Work) -> Callable[[int], list]:
    """``calibration(n)``: the user's file, else ``n`` dataset samples, else ``n`` generated inputs; what
    was used is kept for the manifest."""

    def get(n: int) -> list:
        if w.options.calibration:
            samples = load_calibration_file(w.options.calibration, w.example, w.ranges)
            source = "file:" + str(w.options.calibration)
        elif w.dataset is not None:
            samples, source = _dataset_samples(w.dataset["train"][0], n), w.spec.dataset.name
        else:
            samples, source = generated_like(w.example, n, w.options.seed + 1, w.ranges), "generated"
        w.calibration = Calibration(source=source, samples=len(samples))
        return Samples(samples, source)

    return get


def _heldout(w: Work) -> Callable[[int], list] | None:
    """``heldout(n)`` (a distill step measures on it): the dataset's test split, else inputs generated with a
    seed neither the calibration nor the test vectors use (the example, which both start with, left out);
    None with a calibration file (the step holds part of it back)."""
    if w.options.calibration:
        return None
    if w.dataset is not None:
        return lambda n: Samples(_dataset_samples(w.dataset["test"][0], n), f"{w.spec.dataset.name} test split")
    return lambda n: Samples(generated_like(w.example, n + 1, w.options.seed + 2, w.ranges)[1:],
                             f"generated (seed {w.options.seed + 2})")


def _labelled(w: Work) -> Callable[[int], list] | None:
    """``labelled(n)``: the dataset's first ``n`` training inputs with their labels (a classifier's dataset)."""
    if w.dataset is None or w.spec.task != "classification" or w.options.calibration:
        return None

    def get(n: int) -> list:
        x, y = w.dataset["train"]
        samples = _dataset_samples(x, n)
        return Samples(samples, f"{w.spec.dataset.name} train split", labels=y[:len(samples)])

    return get


def _step_stage(step: Recipe, *, last: bool) -> Callable[[Work], None]:
    def run(w: Work) -> None:
        distill = [s for s in w.chain.steps if s.kind == "distill"]
        if distill and step.kind in ("prune", "factorize") and getattr(w, "teacher", None) is None:
            w.teacher = w.module   # a distill step's teacher; run_step gives this step its own copy
        ctx = RecipeContext(module=w.module, example=w.example, target=w.target, flavour="model",
                            calibration=_calibration(w),
                            capture=lambda m, without=(): _capture(m, w.example, w.target, without),
                            warn=w.progress.warn, teacher=getattr(w, "teacher", None), heldout=_heldout(w),
                            labelled=_labelled(w))
        result = RecipeChain.run_step(step, ctx)
        if distill and step is distill[-1]:
            w.teacher = None   # no later step needs it
        facts = dict(result.facts)
        if step.kind != "quantize":
            # a prune/factorize/distill step makes a new model: the program is verified against it, eagerly
            if w.dataset is not None and w.spec.task == "classification":
                facts["eager_accuracy"] = {"before": _eager_accuracy(w.original, *w.dataset["test"]),
                                           "after": _eager_accuracy(result.module, *w.dataset["test"])}
            w.original = result.module
        w.step_facts[next(i for i, s in enumerate(w.chain.steps) if s is step)] = facts
        if step.kind in ("prune", "factorize"):   # parameters and FLOPs per layer type, before and after (inspect)
            facts["layer_stats"] = change_facts(measure_layers(w.module, w.example),
                                                measure_layers(result.module, w.example))
        w.module = result.module
        if result.exported is not None:
            w.exported = result.exported
        elif last:  # the model after the chain, captured for lowering
            w.exported = _capture(w.module, w.example, w.target)
    return run


def _lower_stage(w: Work) -> None:
    from .targets import COMPILER_REPORTS

    reports = COMPILER_REPORTS.get(w.target.toolchain)
    with (reports(w.tmp, w.target) if reports else contextlib.nullcontext()) as kept:
        w.lowered = _lower(w.exported, w.target, w.chain.quantize, w.example)
        w.compiler_report = kept.facts() if kept is not None else None   # the backend compiler's own figures
    w.graph = graph_facts(w.exported_nodes, w.lowered.summary)
    if w.lowered.exclusions:
        w.graph["lowering_attempts"] = w.lowered.attempts
    for exclusion in w.lowered.exclusions:
        w.progress.warn(exclusion.sentence())
    if graph_warning(w.graph):
        w.progress.warn(graph_warning(w.graph))


def _write_stage(w: Work) -> None:
    import torch

    tmp, spec, module, example, opts = w.tmp, w.spec, w.original, w.example, w.options
    program = w.lowered.program
    pte = tmp / "model.pte"
    with open(pte, "wb") as f:
        program.write_to_file(f)
    program.get_etrecord().save(str(tmp / "model.etrecord"))
    fp32_bytes = int(sum(p.numel() * 4 for p in module.parameters()))
    for i, step in enumerate(w.chain.steps):   # what a step says of the written program (sparsify: compressed size)
        extra = step.program_facts(pte)
        if extra:
            w.step_facts[i] = {**w.step_facts.get(i, {}), **extra}
    scheme = scheme_ref(w.chain, w.step_facts)
    if "layers" in scheme.facts:
        _, text = quant_report.share_warning(scheme.name, scheme.facts["quantizer"], scheme.facts["layers"],
                                             pte.stat().st_size, fp32_bytes)
        if text:
            w.progress.warn(text)
    first = tuple(t.clone() for t in example)   # test vector 0 is always the example
    if w.user_vectors is not None:
        samples = [first, *w.user_vectors]
    elif w.dataset is not None:
        samples = [first, *_dataset_samples(w.dataset["test"][0], opts.vectors - 1)]
    else:
        samples = generated_like(example, opts.vectors, opts.seed, w.ranges)
    with torch.no_grad():
        raw = [module(*s) for s in samples]
    eager_outputs = [_flatten(r) for r in raw]
    out_names = output_names(raw[0])
    del raw
    vectors = _save_vectors(tmp, samples, eager_outputs)
    facts = describe_program(program.executorch_program)
    names = w.input_names
    w.dataset_split = None
    if w.dataset is not None and spec.task == "classification":
        x, y = w.dataset["test"]
        w.dataset_split = _save_dataset(tmp, spec.dataset.name, x, y, example)
    w.manifest = Manifest(
        status="unverified",
        model=ModelRef(**{**spec.to_json(), "parameters": int(sum(p.numel() for p in module.parameters())),
                          "fp32_weight_bytes": fp32_bytes}),
        target=TargetRef(**w.target.to_json()), scheme=scheme,
        recipe_hash=w.identity.hash, recipe=w.identity, versions=_versions(),
        inputs=tuple(TensorSpec(name=names[i] if i < len(names) else f"input_{i}", shape=tuple(t.shape),
                                dtype=_np_dtype(t)) for i, t in enumerate(example)),
        outputs=tuple(TensorSpec(name=out_names[j], shape=tuple(t.shape), dtype=_np_dtype(t))
                      for j, t in enumerate(eager_outputs[0])),
        files={"pte": "model.pte", "etrecord": "model.etrecord"},
        pte_bytes=pte.stat().st_size, pte_sha256=sha256_file(pte),
        etrecord_bytes=(tmp / "model.etrecord").stat().st_size, method=facts["method"],
        planned_memory_bytes=facts["planned_memory_bytes"], planned_buffers=tuple(facts["planned_buffers"]),
        operators=Operators.from_json(facts["operators"], "operators"), test_vectors=tuple(vectors),
        calibration=w.calibration, dataset=w.dataset_split, path=tmp, graph=w.graph,
        warnings=tuple(w.progress.warnings), compiler_report=getattr(w, "compiler_report", None),
    )


def _verify_stage(w: Work) -> None:
    if w.target.functional_check is not None:   # this host cannot run the program: its numerics another way
        from .targets import FUNCTIONAL_CHECKS

        w.verification = FUNCTIONAL_CHECKS[w.target.functional_check](w.exported, w.manifest, w.limits)
        return
    w.verification = verify_artifact(w.tmp, w.manifest, w.limits)
    if w.dataset_split is not None:
        x, y = w.dataset["test"]
        w.verification = dataclasses.replace(w.verification,
                                             task_accuracy=_task_accuracy(w.original, w.tmp / "model.pte", x, y))


# ---------------------------------------------------------------------------------------------


def export_model(
    model: Any,
    target: str,
    scheme: "str | Recipe | RecipeChain | None" = None,
    out_dir: str | os.PathLike | None = None,
    *,
    example_inputs: Any = None,
    name: str | None = None,
    scheme_options: dict | None = None,
    options: ExportOptions | None = None,
    thresholds: dict | None = None,
    on_stage: OnStage | None = None,
    on_stage_done: OnStageDone | None = None,
    on_warning: OnWarning | None = None,
    on_progress: OnProgress | None = None,
) -> Manifest:
    """Export ``model`` for ``target`` with the recipe ``scheme``; return the manifest (also written to disk).

    ``model``: a zoo name, ``package.module:factory``, a :class:`ModelSpec`, an ``nn.Module`` with
    ``example_inputs`` (a tensor or a tuple of tensors), a ``(module, example_inputs)`` pair or an
    ``ExportedProgram``; ``name`` names a model given as an object (default: its class name).
    ``scheme``: recipe text (``int8``, ``8da4w:group_size=64``, a chain of registered recipes), a recipe or a
    :class:`RecipeChain`; None is the target's default. ``scheme_options`` set options of its quantize
    step. ``on_stage(name)`` / ``on_stage_done(name, seconds)`` report progress; ``on_warning(text)`` is
    called as soon as a warning is known (they are all in the manifest's ``warnings`` too);
    ``on_progress(name, fraction, detail)`` as a long stage gets on (see :mod:`.stages`).

    Raises :class:`UsageError` for a call that cannot be honoured (before any work),
    :class:`ExportError` naming the failed stage, or :class:`VerificationFailed` after the artifact
    was written with ``status: "failed"``.
    """
    started = time.monotonic()
    options = options or ExportOptions()
    progress = Progress(on_stage, on_stage_done, on_warning, on_progress)
    with progress.stage("resolve"):
        tgt = get_target(target)
        chain = RecipeChain.of(scheme, default=tgt.default_scheme).with_options(**(scheme_options or {}))
        tgt.check_recipe(chain)
        chain.check_handlers("model")
        _check_model_options(chain, options)
        spec: ModelSpec = resolve_model(model, example_inputs, name=name)
        limits = Thresholds.for_scheme(chain, **(thresholds or {}))
        identity = recipe_identity(spec, tgt, chain, calibration=options.calibration, seed=options.seed,
                                   vectors=options.vectors, vectors_file=options.vectors_file)
        plan = _model_plan(chain)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec.name, tgt.name, chain.spec)
    if tgt.toolchain is not None:   # its backend imports only in its own environment: the export runs there
        from .arm import worker

        if not worker.inside():
            return worker.export_in_toolchain(model, tgt, chain, out, options=options, thresholds=thresholds,
                                              progress=progress, started=started)
    with artifact_dir(out, options.overwrite) as tmp:
        w = Work(spec=spec, target=tgt, chain=chain, options=options, limits=limits, identity=identity, tmp=tmp,
                 progress=progress, step_facts={}, calibration=None, input_names=[])
        plan.run(w, progress)
        verification = w.verification
        manifest = dataclasses.replace(w.manifest, verification=verification,
                                       status=STATUS_OK if verification.passed else STATUS_FAILED,
                                       export_seconds=round(time.monotonic() - started, 3),
                                       stage_seconds=dict(progress.times), warnings=tuple(progress.warnings))
        write_manifest(tmp, manifest)
    manifest = dataclasses.replace(manifest, path=out)
    if not verification.passed:
        raise VerificationFailed(
            f"the program disagrees with eager PyTorch: {'; '.join(verification.failures)}. "
            f"The artifact was kept at {out} and marked failed in its manifest.",
            hint="Try a gentler scheme (e.g. int8 instead of 8da4w), more calibration samples, or real "
                 "calibration data with --calibration.")
    return manifest
