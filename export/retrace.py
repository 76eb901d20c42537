"""Skip the XNNPACK delegate passes' re-traces of partitions they did not change.

Where an LLM export's time goes (``benchmarks/llm_export_cost.py``, cProfile of the lower stage): most of it
is XNNPACK's ``preprocess``, which runs its fixed list of 14 graph passes on every delegate partition, and
every one of those passes ends in ``ExportPass.call`` — a full re-trace of the partition through fake
tensors (with symbolic shapes for the prompt length) to regenerate node metadata — *whether or not it
changed the graph*. Most of them match nothing in a transformer (upsampling, BatchNorm, conv1d, PReLU,
concatenation ...), so a 30-layer LLM with ~300 partitions pays for thousands of re-traces that produce
the graph they were given.

:func:`skip_idle_retraces` installs, for the duration of a lowering, a check in front of that re-trace
for XNNPACK's own passes (subclasses of ``XNNPACKPass``): the graph's text (every node, its target and
its arguments, ``str(graph)``) is taken when the pass starts (``requires``, which the pass framework
calls before ``call``) and compared when the pass asks for its re-trace; if nothing changed, the graph
module is returned as it is. A pass that changed a node — or only rewired arguments — is re-traced as
before. Metadata the pass wrote on nodes in place stays on those nodes either way.

This reaches into ExecuTorch's pass classes, which offer no switch for it, so it is applied only on the
ExecuTorch version it was checked on (:data:`CHECKED_ON`; otherwise it does nothing and logs why), and
tests export programs with and without it and require the same bytes (``tests/export/test_retrace.py``).
``EDGERUN_FULL_RETRACES=1`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator

log = logging.getLogger("edgerun.export")

#: the ExecuTorch versions whose XNNPACK passes were checked to give the same program with the skip
CHECKED_ON = ("1.5.1",)

_LOCK = threading.Lock()
_depth = 0
_saved: dict = {}
#: counts since import, for benchmarks and tests: re-traces done and skipped
COUNTS = {"retraced": 0, "skipped": 0}


def _applicable() -> bool:
    if os.environ.get("EDGERUN_FULL_RETRACES", "").strip() not in ("", "0"):
        return False
    try:
        from importlib.metadata import version

        v = version("executorch")
    except Exception:  # noqa: BLE001 - no metadata: not the checked wheel
        return False
    if v.split("+")[0] not in CHECKED_ON:
        log.info("executorch %s: XNNPACK passes re-trace every partition (the idle re-trace skip was checked on "
                 "%s only)", v, ", ".join(CHECKED_ON))
        return False
    return True


def _install() -> None:
    from executorch.backends.xnnpack._passes.xnnpack_pass import XNNPACKPass
    from executorch.exir.pass_base import ExportPass
    from torch.fx.passes.infra.pass_base import PassResult

    _saved["had"] = {k: k in XNNPACKPass.__dict__ for k in ("requires", "call")}
    _saved["old"] = {k: XNNPACKPass.__dict__[k] for k in ("requires", "call") if k in XNNPACKPass.__dict__}

    def requires(self, graph_module) -> None:
        self._edgerun_graph_text = str(graph_module.graph)

    def call(self, graph_module):
        before = self.__dict__.pop("_edgerun_graph_text", None)
        if before is not None and before == str(graph_module.graph):
            COUNTS["skipped"] += 1
            return PassResult(graph_module, False)
        COUNTS["retraced"] += 1
        return ExportPass.call(self, graph_module)

    XNNPACKPass.requires = requires
    XNNPACKPass.call = call
    _saved["cls"] = XNNPACKPass


def _remove() -> None:
    cls = _saved.pop("cls")
    for k, had in _saved.pop("had").items():
        if had:
            setattr(cls, k, _saved["old"][k])
        else:
            delattr(cls, k)
    _saved.pop("old", None)


@contextlib.contextmanager
def skip_idle_retraces() -> Iterator[bool]:
    """While inside, XNNPACK's passes skip the re-trace of a partition they left unchanged; yields whether
    the skip is on (see the module docstring). Nested and concurrent uses share one installation."""
    global _depth
    with _LOCK:
        on = _depth > 0 or _applicable()
        if on:
            if _depth == 0:
                _install()
            _depth += 1
    try:
        yield on
    finally:
        if on:
            with _LOCK:
                _depth -= 1
                if _depth == 0:
                    _remove()
