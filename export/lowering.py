"""Lowering with a fallback: when a delegate cannot take a node, keep that node on portable kernels.

:func:`lower` runs ``to_edge_transform_and_lower`` + ``to_executorch`` and loads the program's
method in ExecuTorch's runtime (a delegate may also refuse a graph when it initialises). If that
fails while a backend is partitioning, the culprit is found and kept out of the delegate, and the
program is lowered again, at most :data:`MAX_LOWERINGS` times:

1. from the exception: the innermost traceback frame that holds an ``fx.Node`` (the node the
   failing backend pass was working on) names it, and the pass it was in (a quantize/dequantize
   node names the operator it belongs to);
2. otherwise by bisection over the delegated operators: lower with half of them kept out; the half
   whose exclusion makes lowering succeed holds the culprit. If lowering fails also with all of
   them kept out, the delegate is not the problem and the first error is raised.

Only operators are kept out, never a quantize/dequantize node on its own, and a program lowered
with something kept out must not only load but also agree with the graph it was lowered from
(``agreement_check``): a partition cut at a new place can load and compute wrong values.

Nodes are named by their *origin* — the ``torch.export`` node they were decomposed from
(``meta["from_node"]``) — which stays the same across attempts, while edge-dialect names do not.
Exclusion works through the XNNPACK partitioner's configs (a node's ``check_constraints`` says no),
which ExecuTorch offers no switch for; for other partitioners a partition that holds an excluded
node is dropped whole.

:func:`graph_facts` describes the decomposed graph the partitioners saw: how many operator
nodes, and which modules they come from (``meta["nn_module_stack"]``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter
from typing import Any, Callable, Sequence

log = logging.getLogger("edgerun.export")

MAX_LOWERINGS = 16
#: a graph is "large" when a single module makes this many operator nodes itself ...
LARGE_MODULE_NODES = 150
#: ... or the whole graph has this many
LARGE_GRAPH_NODES = 3000
#: a module's own nodes are "a loop unrolled over its steps" only when they repeat: every operator
#: kind it emits appears this many times on average (an RNN over T steps repeats its cell's ops T
#: times; a large block written out once does not)
LOOP_REPEATS = 8


@dataclasses.dataclass(frozen=True)
class Exclusion:
    """Nodes kept out of the delegate, and why (one sentence for the manifest's warnings)."""

    origins: tuple[str, ...]
    ops: tuple[str, ...]
    modules: tuple[str, ...]
    reason: str

    def sentence(self) -> str:
        where = f" (in {', '.join(self.modules)})" if self.modules else ""
        if len(self.origins) == 1:
            what = f"node `{self.ops[0]}`"
        else:
            shown = ", ".join(f"`{o}`" for o in self.ops[:6]) + (" …" if len(self.ops) > 6 else "")
            what = f"{len(self.origins)} nodes ({shown})"
        return f"{what}{where} left on portable kernels: {self.reason}"


# ------------------------------------------------------------------------------- node identity
def node_origin(node) -> str:
    """The name of the ``torch.export`` node this node was made from (its own name if none)."""
    sources = node.meta.get("from_node") or []
    origin = None
    while sources:
        origin = sources[0]
        sources = getattr(origin, "from_node", None) or []
    return origin.name if origin is not None and origin.name else node.name


def op_name(node) -> str:
    """``aten.convolution.default`` for aten and edge-dialect ops alike."""
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.replace("::", ".")


def is_quant_node(node) -> bool:
    """A quantize / dequantize / choose_qparams node: it annotates an operator's input or output
    with quantization parameters and is not an operator of its own."""
    if node.op != "call_function":
        return False
    return any(part.startswith(("quantize_", "dequantize_", "choose_qparams"))
               for part in op_name(node).split("."))


def operator_node(node):
    """The operator a quantization node belongs to (``node`` itself when it is an operator): a
    dequantize node's nearest consumer, a quantize node's producer (for a graph input's quantize,
    its consumer), looking through chains of q/dq nodes; None when there is none."""
    seen: set = set()

    def search(n):
        if n is None or n in seen or getattr(n, "op", None) != "call_function":
            return None
        if not is_quant_node(n):
            return n
        seen.add(n)
        dequantize = any(part.startswith("dequantize_") for part in op_name(n).split("."))
        producers = [a for a in n.args if hasattr(a, "op")][:1]
        consumers = list(n.users)
        for m in (consumers + producers if dequantize else producers + consumers):
            found = search(m)
            if found is not None:
                return found
        return None

    return search(node)


def node_module(node) -> tuple[str, str] | None:
    """(qualified path, class name) of the innermost module a node comes from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, kind = next(reversed(stack.values()))
    kind_name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].rstrip("'>")
    path = str(path)
    if path.startswith("L['self']"):
        path = path.replace("L['self'].", "").replace("L['self']", "")
    return (path, kind_name) if path else None


# ------------------------------------------------------------------------------- graph facts
@dataclasses.dataclass
class GraphSummary:
    """What the partitioners saw: operator nodes, by module, and each origin's op and module.

    ``operators`` are the origins that made at least one operator node; the others made only
    quantize/dequantize nodes (a quantized activation's observer, a weight's dequantize)."""

    nodes: int
    by_module: Counter
    origins: dict[str, tuple[str, str | None]]   # origin -> (op, module path)
    operators: frozenset = frozenset()
    kinds_by_module: dict = dataclasses.field(default_factory=dict)  # module -> distinct operator kinds

    @classmethod
    def of(cls, graph) -> "GraphSummary":
        nodes = [n for n in graph.nodes if n.op == "call_function"]
        by_module: Counter = Counter(node_module(n) or ("(top level)", "") for n in nodes)
        kinds: dict = {}
        for n in nodes:
            kinds.setdefault(node_module(n) or ("(top level)", ""), set()).add(op_name(n))
        origins: dict[str, tuple[str, str | None]] = {}
        operators: set[str] = set()
        for n in nodes:
            origin, mod = node_origin(n), node_module(n)
            if is_quant_node(n) and origin in operators:
                continue                      # an origin is named by its operator, not its q/dq
            if not is_quant_node(n):
                operators.add(origin)
            origins[origin] = (op_name(n), mod[0] if mod else None)
        return cls(len(nodes), by_module, origins, frozenset(operators),
                   {m: len(k) for m, k in kinds.items()})


def graph_facts(exported_nodes: int, summary: GraphSummary | None, top: int = 5) -> dict[str, Any]:
    """The manifest's ``graph`` fact: node counts after torch.export and after decomposition, the
    modules that make the most nodes themselves (innermost module; ``kinds``: how many distinct
    operators), and ``unrolled``: the modules whose own nodes repeat like a loop over steps (at least
    :data:`LARGE_MODULE_NODES` nodes, each operator kind :data:`LOOP_REPEATS` times on average)."""
    if summary is None:
        return {"exported_nodes": exported_nodes}
    top_modules = [{"module": path, "type": kind, "nodes": count,
                    "kinds": summary.kinds_by_module.get((path, kind))}
                   for (path, kind), count in summary.by_module.most_common(top)]
    unrolled = [m["module"] for m in top_modules
                if m["module"] != "(top level)" and m["nodes"] >= LARGE_MODULE_NODES and m["kinds"]
                and m["nodes"] >= LOOP_REPEATS * m["kinds"]]
    large = summary.nodes >= LARGE_GRAPH_NODES or bool(unrolled)
    return {"exported_nodes": exported_nodes, "nodes": summary.nodes, "top_modules": top_modules, "large": large,
            "unrolled": unrolled}


def _module_label(m: dict) -> str:
    return f"{m['module']} ({m['type']})" if m.get("type") else m["module"]


def graph_warning(facts: dict[str, Any]) -> str | None:
    """One sentence about a large graph that claims only what was measured: a loop unrolled over its
    steps is named only for modules whose own nodes repeat (``facts["unrolled"]``); a graph that is
    merely big (many layers) is called big, with the modules that make the most nodes."""
    if not facts.get("large"):
        return None
    head = (f"the graph has {facts['nodes']} operator nodes after decomposition (torch.export made "
            f"{facts['exported_nodes']})")
    by_name = {m["module"]: m for m in facts.get("top_modules", [])}
    unrolled = [by_name[u] for u in facts.get("unrolled") or () if u in by_name]
    if unrolled:
        loops = ", ".join(f"{_module_label(m)} makes {m['nodes']} nodes from {m['kinds']} kinds of operator"
                          for m in unrolled[:3])
        return (f"{head}; {loops} — the same operators repeated, a loop unrolled over its steps (e.g. an RNN "
                "over a long sequence): export, lowering and the program grow with the step count")
    tops = ", ".join(f"{_module_label(m)} {m['nodes']}" for m in facts.get("top_modules", [])[:3])
    return (f"{head}; the modules making the most nodes themselves: {tops} — export and lowering time and "
            "the program's size grow with the node count")


# ------------------------------------------------------------------------------- partitioners
class _Excluding:
    """Wraps a partitioner so that nodes whose origin is in ``excluded`` are not delegated, and
    records what it partitioned (origins per delegated partition) and the graph it saw."""

    def __new__(cls, inner, excluded: frozenset[str], record: dict):
        from executorch.exir.backend.partitioner import Partitioner, PartitionResult

        class Excluding(Partitioner):
            def __init__(self):
                super().__init__(getattr(inner, "spec", {}))
                self.inner = inner
                configs = getattr(inner, "target_partitioner_configs", None)
                self.by_config = isinstance(configs, dict)
                if self.by_config and excluded:
                    busy: set[int] = set()
                    for cfg in configs.values():
                        original = cfg.check_constraints

                        def check(node, ep, _cfg=cfg, _original=original):
                            # no to a node kept out, and to one whose partition (node + the deps the
                            # config would take along) holds one: asked the same way while decomposing
                            # and while partitioning, so nothing is left undecomposed and undelegated
                            if node_origin(node) in excluded or not _original(node, ep):
                                return False
                            deps_of = getattr(_cfg, "get_node_and_deps", None)
                            if deps_of is None or id(_cfg) in busy:
                                return True
                            busy.add(id(_cfg))
                            try:
                                deps = deps_of(node, ep)
                            except Exception:  # noqa: BLE001 - the config's own check said yes
                                return True
                            finally:
                                busy.discard(id(_cfg))
                            return not any(d.op == "call_function" and node_origin(d) in excluded for d in deps)

                        cfg.check_constraints = check

            def ops_to_not_decompose(self, ep):
                ops, keep = self.inner.ops_to_not_decompose(ep)
                if not excluded:
                    return ops, keep

                def filtered(node):
                    return node_origin(node) not in excluded and (keep(node) if keep else True)

                return ops, filtered

            def transform_for_pre_decomposition(self, ep):
                return self.inner.transform_for_pre_decomposition(ep)

            def partition(self, ep) -> PartitionResult:
                if "summary" not in record:
                    record["summary"] = GraphSummary.of(ep.graph_module.graph)
                result = self.inner.partition(ep)
                tags: dict[str, list] = {}
                for node in result.tagged_exported_program.graph.nodes:
                    tag = node.meta.get("delegation_tag")
                    if tag in result.partition_tags:
                        tags.setdefault(tag, []).append(node)
                for tag, members in tags.items():
                    if any(node_origin(n) in excluded for n in members):  # a dependency pulled it in
                        for n in members:
                            n.meta.pop("delegation_tag", None)
                        result.partition_tags.pop(tag, None)
                        continue
                    record.setdefault("delegated", []).extend(
                        node_origin(n) for n in members if n.op == "call_function")
                    record.setdefault("backend", result.partition_tags[tag].backend_id)
                return result

        return Excluding()


# ------------------------------------------------------------------------------- the culprit
def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (a pass manager wraps them)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _culprit_from_traceback(exc: BaseException):
    """(fx node, pass name) from the innermost traceback frame holding an ``fx.Node``, searching the
    innermost exception of the chain first; the pass is the frame's ``self`` (a ``*Pass`` class) or
    the one a pass manager's message names."""
    import re

    import torch

    chain = _chain(exc)
    named = None
    for e in chain:
        found = re.search(r"running the '([A-Za-z0-9_]+)' pass", str(e))
        if found:
            named = found.group(1)
    for e in reversed(chain):
        frames = []
        tb = e.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for k in range(len(frames) - 1, -1, -1):
            local = frames[k].f_locals
            candidates = [local.get("node")] + [v for name, v in local.items() if name != "node"]
            node = next((v for v in candidates if isinstance(v, torch.fx.Node) and v.op == "call_function"), None)
            if node is None:
                continue
            pass_name = None
            for outer in reversed(frames[: k + 1]):
                owner = outer.f_locals.get("self")
                if owner is not None and type(owner).__name__.lower().endswith("pass"):
                    pass_name = type(owner).__name__
                    break
            return node, pass_name or named
    return None, named


def _describe(origins: Sequence[str], summary: GraphSummary, reason: str) -> Exclusion:
    ops, modules = [], []
    for o in origins:
        if o in summary.origins:
            op, mod = summary.origins[o]
            if op not in ops:
                ops.append(op)
            if mod and mod not in modules:
                modules.append(mod)
    return Exclusion(origins=tuple(origins), ops=tuple(ops) or tuple(origins), modules=tuple(modules[:4]),
                     reason=reason)


@dataclasses.dataclass
class Lowered:
    program: Any                      # ExecutorchProgramManager
    summary: GraphSummary | None      # the decomposed graph the partitioners saw (None without any)
    exclusions: tuple[Exclusion, ...]
    attempts: int


def lower(exported, make_partitioners: Callable[[], list], *, backend_label: str = "the delegate",
          config=None, backend_config=None, load_check: Callable[[Any], None] | None = None,
          agreement_check: Callable[[Any], None] | None = None) -> Lowered:
    """Lower ``exported`` with the partitioners ``make_partitioners()`` returns (fresh each time),
    keeping out of the delegate whatever it fails on (see the module doc).

    ``load_check(program)`` raises when the runtime refuses the program. ``agreement_check(program)``
    raises when the program's outputs disagree with the graph it was lowered from; it replaces the
    load check for a program lowered with nodes kept out, which is accepted only if it agrees: a
    partition cut at a new place can load and still compute wrong values (XNNPACK did so for the
    MobileViT-like block when a quantized activation's q/dq pair was kept out on its own)."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    # out variants of the quantize/dequantize ops, for a quantized node kept on portable kernels
    import executorch.kernels.quantized  # noqa: F401

    from .retrace import skip_idle_retraces

    attempts = 0

    def attempt(excluded: frozenset[str]):
        nonlocal attempts
        attempts += 1
        record: dict = {}
        parts = [_Excluding(p, excluded, record) for p in make_partitioners()]
        try:
            with skip_idle_retraces():
                edge = to_edge_transform_and_lower(
                    copy.deepcopy(exported), partitioner=parts,
                    compile_config=config or EdgeCompileConfig(_check_ir_validity=False), generate_etrecord=True)
            program = edge.to_executorch(backend_config or ExecutorchBackendConfig(extract_delegate_segments=True))
            check = agreement_check if excluded and agreement_check is not None else load_check
            if check is not None:
                check(program)
            return program, record, None
        except Exception as exc:  # noqa: BLE001 - every failure is examined below
            log.debug("lowering attempt %d (%d origins kept off the delegate) failed: %s: %s", attempts,
                      len(excluded), type(exc).__name__, _short(exc), exc_info=log.isEnabledFor(logging.DEBUG))
            return None, record, exc

    program, record, first_error = attempt(frozenset())
    summary = record.get("summary")
    if program is not None:
        return Lowered(program, summary, (), attempts)
    if summary is None:          # failed before any partitioner ran, or there is none
        raise first_error
    excluded: list[str] = []
    exclusions: list[Exclusion] = []
    error = first_error

    # 1. the node the failing pass was working on, while the exception names one
    while attempts < MAX_LOWERINGS:
        node, pass_name = _culprit_from_traceback(error)
        node = operator_node(node) if node is not None else None   # a q/dq node goes with its operator
        origin = node_origin(node) if node is not None else None
        if origin is None or origin in excluded or origin not in summary.origins:
            break
        excluded.append(origin)
        reason = f"{backend_label}'s {pass_name} fails on it" if pass_name else \
            f"{backend_label} fails on it ({type(error).__name__}: {_short(error)})"
        exclusions.append(_describe([origin], summary, reason))
        program, record, error = attempt(frozenset(excluded))
        if program is not None:
            return Lowered(program, summary, tuple(exclusions), attempts)

    # 2. bisection over the delegated operators of the failing attempt. Only operators are
    # candidates: keeping a quantize/dequantize pair out on its own cuts a quantized chain where no
    # operator ends, which the delegate may load and then compute wrongly; an operator kept out
    # takes its output q/dq (same origin) along and the partitioner handles its inputs' q/dq as for
    # any operator it does not support.
    delegated = [o for o in dict.fromkeys(record.get("delegated", [])) if o not in excluded]
    if any(o in summary.operators for o in delegated):
        delegated = [o for o in delegated if o in summary.operators]
    if not delegated or attempts >= MAX_LOWERINGS:
        raise first_error
    good: dict[frozenset, Any] = {}

    def works(extra: Sequence[str]) -> bool:
        key = frozenset(excluded) | frozenset(extra)
        if key not in good:
            if attempts >= MAX_LOWERINGS:
                return False
            program, _, _ = attempt(key)
            good[key] = program
        return good[key] is not None

    def smallest(candidates: list[str], base: list[str]) -> list[str]:
        """A small subset of ``candidates`` whose exclusion (with ``base``) lets lowering succeed;
        excluding ``base + candidates`` is known to work."""
        if len(candidates) <= 1 or attempts >= MAX_LOWERINGS:
            return candidates
        a, b = candidates[: len(candidates) // 2], candidates[len(candidates) // 2 :]
        if works(base + a):
            return smallest(a, base)
        if works(base + b):
            return smallest(b, base)
        in_a = smallest(a, base + b)                 # culprits in both halves
        return in_a + smallest(b, base + in_a)

    if not works(delegated):
        raise first_error            # fails with nothing delegated: not the delegate's doing
    culprits = smallest(delegated, [])
    if not works(culprits):          # the budget ran out part way: keep the whole set out
        culprits = delegated
    cause = f"{type(first_error).__name__}: {_short(first_error)}"
    reason = (f"{backend_label} fails on {'it' if len(culprits) == 1 else 'them'} ({cause}); found by "
              "lowering again without them")
    exclusions.append(_describe(culprits, summary, reason))
    return Lowered(good[frozenset(excluded) | frozenset(culprits)], summary, tuple(exclusions), attempts)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."
