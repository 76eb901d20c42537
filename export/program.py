"""Facts read off a lowered ExecuTorch program: operators, delegates, planned memory.

Reads the program's own flatbuffer-schema object (``ExecutorchProgramManager.executorch_program``),
so the numbers are the ones the runtime will see, not a guess from the graph.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _op_name(op) -> str:
    return f"{op.name}.{op.overload}" if op.overload else op.name


def describe_program(program: Any, method: str = "forward") -> dict:
    """Operators (by kernel name, with call counts), delegate calls per backend, memory plan."""
    plans = {plan.name: plan for plan in program.execution_plan}
    plan = plans.get(method) or program.execution_plan[0]
    kernel_calls: Counter[str] = Counter()
    delegate_calls: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                kernel_calls[_op_name(plan.operators[args.op_index])] += 1
            elif kind == "DelegateCall":
                delegate_calls[plan.delegates[args.delegate_index].id] += 1
    buffers = [int(b) for b in plan.non_const_buffer_sizes]
    return {
        "method": plan.name,
        "methods": sorted(plans),
        "operators": {
            "non_delegated": dict(sorted(kernel_calls.items())),
            "delegated": dict(sorted(delegate_calls.items())),
            "delegates": sorted({d.id for d in plan.delegates}),
            "operator_table": sorted({_op_name(op) for op in plan.operators}),
        },
        # buffer 0 is reserved by the planner; the rest is what the runtime must allocate for
        # activations and other mutable tensors (constants live in the .pte itself)
        "planned_memory_bytes": sum(buffers[1:]),
        "planned_buffers": buffers,
    }
