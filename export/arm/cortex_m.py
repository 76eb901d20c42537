"""Cortex-M targets: ExecuTorch's Cortex-M backend (CMSIS-NN operators), no NPU.

Not a partitioner: the int8 graph (``CortexMQuantizer``) goes through ``to_edge`` with the backend's edge
config, then ``CortexMPassManager`` for the core (``CortexMTargetConfig(cpu=...)``: the CMSIS-NN variant --
MVE on M55/M85, DSP on M4/M7) replaces quantized patterns with ``cortex_m::`` operators, and
``to_executorch`` writes the program. Both run in the backend's explicit-layout mode (the compile option
``layout=explicit``): the quantizer takes convolutions of ordinary NCHW models (its default mode takes only
channels-last ones, so an NCHW model's convolutions stayed fp32), and the passes rewrite each quantized
convolution and pooling to its NHWC ``cortex_m::`` operator with ``cortex_m::transpose`` where the layout
changes; the program's inputs and outputs keep the model's NCHW shapes. Those operators have no kernels in
this host's ExecuTorch runtime, so the program cannot run here; the functional check runs the same edge
program in PyTorch, where the ``cortex_m::`` operators are the wheel's host implementations
(``backends/cortex_m/ops``, the CMSIS-NN arithmetic), against eager fp32. No timing is estimated: there is
no cycle model for a Cortex-M here. Everything runs in the Arm toolchain environment (the backend imports the
Arm quantizer, which needs ``tosa-tools``).
"""

from __future__ import annotations

import copy
import dataclasses

from edgerun.core.artifact import Thresholds, Verification, thresholds_failures

from ..targets import FUNCTIONAL_CHECKS, LOWERINGS, Target, register_quantizer, register_target

#: target name -> (CortexM enum name, description)
CORES = {
    "cortex-m55": ("M55", "Arm Cortex-M55 (Helium/MVE, CMSIS-NN)"),
    "cortex-m85": ("M85", "Arm Cortex-M85 (Helium/MVE, CMSIS-NN)"),
    "cortex-m7": ("M7", "Arm Cortex-M7 (DSP, CMSIS-NN)"),
    "cortex-m4": ("M4", "Arm Cortex-M4 (DSP, CMSIS-NN)"),
}


#: the backend's layout mode, the one flag both :func:`_quantizer` and :func:`_edge` read, and a compile option of
#: every Cortex-M target (so part of the artifact's identity: programs of the other mode are not reused):
#: ``CortexMQuantizer(use_explicit_layout=...)`` and ``CortexMPassManager(..., use_explicit_layout=...)``
LAYOUT = "explicit"
EXPLICIT_LAYOUT = LAYOUT == "explicit"


def _edge(exported, target_name: str, *, etrecord: bool = False):
    """(edge manager, transformed edge program) of the quantized graph for the core, in the layout mode
    :func:`_quantizer` quantized it for."""
    from executorch.backends.cortex_m.edge_compile_config import cortex_m_edge_compile_config
    from executorch.backends.cortex_m.passes.cortex_m_pass_manager import CortexMPassManager
    from executorch.backends.cortex_m.target_config import CortexM, CortexMTargetConfig
    from executorch.exir import to_edge

    import executorch.backends.cortex_m.ops.operators  # noqa: F401  the cortex_m:: operators

    edge = to_edge(copy.deepcopy(exported), compile_config=cortex_m_edge_compile_config(), generate_etrecord=etrecord)
    core = CortexM[CORES[target_name][0]]
    manager = CortexMPassManager(edge.exported_program(), target_config=CortexMTargetConfig(cpu=core),
                                 use_explicit_layout=EXPLICIT_LAYOUT)
    try:
        program = manager.transform()
    except Exception as exc:   # the explicit-layout check: a convolution or pooling it cannot make NHWC
        # the poolings it never takes are refused before this (nhwc_blockers, naming them); what is left is one
        # it could not quantize per tensor, which only its message names
        cause = str(exc.__cause__ or exc)
        if not (EXPLICIT_LAYOUT and "NHWC-eligible" in cause):
            raise
        import re

        from edgerun.core.errors import ExportError

        op = re.search(r"aten\.(\w+)", cause)
        raise ExportError(
            f"the model's {op.group(1) if op else 'convolution or pooling'} cannot be lowered by the Cortex-M "
            f"backend in the layout mode {target_name} uses: to quantize the convolutions of an NCHW model, "
            "ExecuTorch's explicit-layout mode rewrites every convolution, average pooling and max pooling to its "
            "int8 NHWC CMSIS-NN operator, and refuses a graph where one cannot be (a max pooling with ceil_mode "
            "or dilation, an average pooling with divisor_override, or one it could not quantize).",
            stage="lower", hint="Use ceil_mode=False and no dilation or divisor_override in the model's pooling "
                                "(or pad the input instead), or export it for an Ethos-U or CPU target.") from exc
    return edge, program


def nhwc_blockers(graph) -> list[str]:
    """The poolings of ``graph`` (an exported or edge graph) that ExecuTorch 1.5.1's explicit-layout mode cannot
    make NHWC, whatever their quantization (its ``explicit_layout_pass``: a max pooling with ceil_mode or a
    dilation other than 1, an average pooling with divisor_override), each as ``"op (where): what"``."""
    found = []
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        name = str(getattr(n.target, "__name__", n.target)).split(".")[0]

        def arg(i, key, default, n=n):
            return n.args[i] if len(n.args) > i else n.kwargs.get(key, default)
        why = []
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            dilation = arg(4, "dilation", 1)
            dilation = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation]
            if any(int(d) != 1 for d in dilation):
                why.append(f"dilation={dilation}")
            if bool(arg(5, "ceil_mode", False)):
                why.append("ceil_mode=True")
        elif name == "avg_pool2d" and arg(6, "divisor_override", None) is not None:
            why.append(f"divisor_override={arg(6, 'divisor_override', None)}")
        if why:
            stack = n.meta.get("nn_module_stack") or {}
            where = (next(reversed(stack.values()))[0] if stack else "") or "the model's forward"
            found.append(f"{name} (in {where}): " + ", ".join(why))
    return found


def lower_cortex_m(exported, target: Target, scheme):
    from executorch.exir import ExecutorchBackendConfig

    from edgerun.core.errors import ExportError

    from ..lowering import GraphSummary, Lowered

    blockers = nhwc_blockers(exported.graph) if EXPLICIT_LAYOUT else []
    if blockers:
        raise ExportError(
            f"{target.name} cannot take {'; '.join(blockers)}: to quantize the convolutions of an NCHW model, "
            "ExecuTorch's explicit-layout mode rewrites every convolution and pooling to its int8 NHWC CMSIS-NN "
            "operator, and these poolings have no such form.", stage="lower",
            hint="Use ceil_mode=False and no dilation or divisor_override in the model's pooling (or pad the input "
                 "instead), or export it for an Ethos-U or CPU target.")
    edge, program = _edge(exported, target.name, etrecord=True)
    summary = GraphSummary.of(program.graph_module.graph)
    edge._edge_programs["forward"] = program
    return Lowered(program=edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=False)),
                   summary=summary, exclusions=(), attempts=1)


def cortex_m_reference_check(exported, manifest, thresholds: Thresholds) -> Verification:
    """The Cortex-M program's edge graph run in PyTorch with the wheel's host ``cortex_m::`` operators, on the
    test vectors, against eager fp32 (labelled functional: not a Cortex-M)."""
    import numpy as np
    import torch
    from torch.utils._pytree import tree_flatten

    from edgerun.core.numerics import aggregate, compare_outputs

    _, program = _edge(exported, manifest.target.name)
    module = program.module()
    from ..lowering import op_name

    ops = sorted({op_name(n).split(".")[1] for n in program.graph.nodes
                  if n.op == "call_function" and op_name(n).startswith("cortex_m.")})
    per_vector = []
    with torch.no_grad():
        for v in manifest.load_test_vectors():
            outs, _ = tree_flatten(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in v.inputs]))
            actual = [np.asarray(o.detach().contiguous().numpy()) for o in outs if isinstance(o, torch.Tensor)]
            per_vector.append(compare_outputs(actual, v.outputs))
    summary = aggregate(per_vector)
    if len(manifest.outputs) == len(summary):
        summary = [dataclasses.replace(m, name=s.name) for m, s in zip(summary, manifest.outputs)]
    failures = thresholds_failures(summary, thresholds)
    return Verification(runtime=f"functional: the Cortex-M edge program with ExecuTorch's host cortex_m operators "
                                f"({', '.join(ops) or 'none'}) in PyTorch; not a Cortex-M",
                        thresholds=thresholds, outputs=tuple(summary), passed=not failures, failures=tuple(failures))


def _quantizer(scheme):
    from executorch.backends.cortex_m.quantizer.quantizer import CortexMQuantizer

    return CortexMQuantizer(use_explicit_layout=EXPLICIT_LAYOUT)


def register() -> None:
    register_quantizer("cortex-m")(_quantizer)
    LOWERINGS["cortex-m"] = lower_cortex_m
    FUNCTIONAL_CHECKS["cortex-m-reference"] = cortex_m_reference_check
    for name, (core, description) in CORES.items():
        arch = "armv8.1-m" if core in ("M55", "M85") else "armv7e-m"
        register_target(Target(
            name, f"{description}; runs on a board (no runner bundle here), checked functionally on this host",
            arch, name, (), "int8", ("int8",), bundle_variant="none", quantizer="cortex-m", toolchain="arm",
            compile_options=(("cpu", core), ("layout", LAYOUT)), functional_check="cortex-m-reference", llm=False,
            lowering="cortex-m"))


register()
