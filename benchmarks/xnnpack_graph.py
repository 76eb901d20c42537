"""What does XNNPACK actually receive from a .pte? Static inspection, no timing.

Reads a program, lists what its method runs outside any delegate (portable/optimized kernel calls)
and decodes every XNNPACK delegate payload (the flatbuffer of
``executorch/backends/xnnpack/serialization/schema.fbs``, turned into JSON by the ``flatc`` that
ships with executorch) into node counts: convolutions by kernel, stride and groups, whether a
ReLU/ReLU6 rides on the node as its output min/max or is a separate clamp node, transposes by
permutation, reshapes, and the delegate's external inputs (activations and constants that the
partitioner left outside the delegate and ExecuTorch passes in on every execute).

    .venv/bin/python benchmarks/xnnpack_graph.py artifacts/mobilenet_v2-host-fp32/model.pte
    .venv/bin/python benchmarks/xnnpack_graph.py model.pte --json

Why it matters for speed: ExecuTorch's XNNPACK executor calls ``xnn_reshape_runtime`` and
``xnn_setup_runtime_v2`` over every node on every execute (TFLite's delegate does so only when a
shape or a buffer pointer changed; edgerun's runner now does the same, runtime/native/src/
xnnpack_calls.cpp, but ExecuTorch's pybindings do not), so for a sub-millisecond program the node
count is a cost of its own, and every transpose/reshape node is also a copy.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path


def _executorch_dir() -> Path:
    import executorch

    return Path(list(executorch.__path__)[0])


def _decode_payload(payload: bytes, work: Path, index: int) -> dict:
    """The XNNPACK flatbuffer inside one delegate payload, as a dict (flatc's JSON)."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    flat = payload[header.flatbuffer_offset: header.flatbuffer_offset + header.flatbuffer_size]
    binary = work / f"delegate{index}.bin"
    binary.write_bytes(flat)
    et = _executorch_dir()
    schema = et / "backends" / "xnnpack" / "serialization" / "schema.fbs"
    subprocess.run([str(et / "data" / "bin" / "flatc"), "--json", "--raw-binary", "--strict-json",
                    "--defaults-json", "-o", str(work), str(schema), "--", str(binary)],
                   check=True, capture_output=True)
    text = (work / f"delegate{index}.json").read_text()
    # flatc writes non-finite floats (an unbounded ReLU's output_max) as bare inf/nan
    text = re.sub(r":\s*(-?)inf\b", lambda m: ": " + m.group(1) + "Infinity", text)
    text = re.sub(r":\s*nan\b", ": NaN", text)
    return json.loads(text)


def _activation(node: dict) -> str | None:
    mm = node.get("output_min_max")
    if not mm:
        return None
    return f"clamp[{mm['output_min']:g},{mm['output_max']:g}]"


def summarize_graph(graph: dict) -> dict:
    """Node counts of one decoded XNNPACK graph (see the module doc)."""
    kinds: Counter = Counter()
    detail: Counter = Counter()
    for node in graph.get("xnodes", []):
        kind = node["xnode_union_type"]
        body = node["xnode_union"]
        kinds[kind] += 1
        act = _activation(node)
        if kind in ("XNNConv2d", "XNNDepthwiseConv2d"):
            label = (f"{kind} k{body['kernel_height']}x{body['kernel_width']} s{body['subsampling_height']}"
                     f" groups={'1' if body['groups'] == 1 else 'C'}")
        elif kind == "XNNStaticTranspose":
            label = f"{kind} perm={body['perm'][: body['num_dims']]}"
        elif kind == "XNNClamp":
            label, act = f"{kind} {act[len('clamp'):]}" if act else kind, None
        else:
            label = kind
        detail[label + (f" +{act}" if act else "")] += 1
    externals = []
    for value in graph.get("xvalues", []):
        body = value["xvalue_union"]
        tensor = body.get("tensor_value", body)
        flags = tensor.get("flags", 0)
        if flags & 1:
            externals.append({"id": tensor["id_out"], "dims": tensor.get("dims"), "dtype": tensor.get("datatype")})
    nodes = sum(kinds.values())
    moves = kinds["XNNStaticTranspose"] + kinds["XNNStaticReshape"]
    return {"nodes": nodes, "kinds": dict(kinds), "detail": dict(sorted(detail.items())),
            "separate_clamps": kinds["XNNClamp"], "data_movement_nodes": moves,
            "external_inputs": externals}


def inspect_program(pte: Path, work: Path | None = None) -> dict:
    """Kernel calls outside delegates and a summary of each XNNPACK delegate of ``pte``."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from edgerun.export.program import describe_program

    program = deserialize_pte_binary(Path(pte).read_bytes()).program
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="xnnpack-graph-")
        work = Path(tmp.name)
    try:
        methods = []
        for plan in program.execution_plan:
            calls = describe_program(program, plan.name)["operators"]   # kernel and delegate calls, counted
            delegates = []
            for i, d in enumerate(plan.delegates):
                entry = {"backend": d.id}
                if d.id == "XnnpackBackend":
                    payload = program.backend_delegate_data[d.processed.index].data
                    entry.update(summarize_graph(_decode_payload(payload, work, len(delegates))))
                delegates.append(entry)
            methods.append({"method": plan.name, "kernel_calls": calls["non_delegated"],
                            "delegate_calls": sum(calls["delegated"].values()),
                            "delegates": delegates})
        return {"program": str(pte), "methods": methods}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _print(report: dict) -> None:
    print(report["program"])
    for m in report["methods"]:
        outside = ", ".join(f"{k} x{v}" for k, v in m["kernel_calls"].items()) or "none"
        print(f"method {m['method']}: {m['delegate_calls']} delegate call(s); kernels outside delegates: {outside}")
        for i, d in enumerate(m["delegates"]):
            if "nodes" not in d:
                print(f"  delegate {i}: {d['backend']} (not decoded)")
                continue
            print(f"  delegate {i}: {d['backend']}, {d['nodes']} nodes, {d['data_movement_nodes']} transpose/reshape, "
                  f"{d['separate_clamps']} separate clamp(s), {len(d['external_inputs'])} external input(s)")
            for label, n in d["detail"].items():
                print(f"    {n:4d}  {label}")
            for e in d["external_inputs"]:
                print(f"    input {e['id']}: {e['dims']} {e['dtype']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program", type=Path, help="a .pte file")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the listing")
    args = ap.parse_args(argv)
    if not args.program.is_file():
        print(f"xnnpack_graph: no program at {args.program}: give the path of a .pte file "
              "(an artifact directory's model.pte).", file=sys.stderr)
        return 2
    report = inspect_program(args.program)
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
