"""The runner's lines, typed once: what does not fit the protocol is a problem kept on the result
(and a RunnerError with the runner-died code), never a crash further on."""

from __future__ import annotations

import json

import pytest

from edgerun.core.errors import RunnerError
from edgerun.runtime.protocol import Header, Iteration, Summary, parse_runner_output, raise_for_result

HEADER = {"type": "header", "protocol": 1, "runner_version": "0.1.0", "executorch_version": "1.5.1",
          "arch": "x86_64", "build": {"build_type": "Release"}, "threads": 2}
LOAD = {"type": "load", "program": "m.pte", "method": "forward", "load_ns": 10, "inputs": [], "outputs": []}
SUMMARY = {"type": "summary", "iterations": 1, "warmup": 0, "peak_rss_kb": 100, "rss_kb": 90, "outputs": []}


def _text(*lines):
    return "\n".join(json.dumps(ln) for ln in lines)


def test_a_good_run_is_typed():
    it = {"type": "iteration", "index": 0, "warmup": False, "execute_ns": 5, "wall_ns": 7}
    r = parse_runner_output(_text(HEADER, LOAD, it, SUMMARY), exit_code=0)
    assert r.ok and isinstance(r.header, Header) and isinstance(r.summary, Summary)
    assert r.iterations == [Iteration(index=0, warmup=False, execute_ns=5, wall_ns=7)] and r.execute_ns == [5]


@pytest.mark.parametrize("bad", [{"execute_ns": "fast"}, {"execute_ns": 1.5e6}, {"execute_ns": -3}, {"index": None}])
def test_a_non_numeric_runner_field_is_a_protocol_problem_not_a_crash(bad):
    """Issue 9 item 15: a non-numeric runner field ended in an internal error (exit 70)."""
    it = {"type": "iteration", "index": 0, "warmup": False, "execute_ns": 5, **bad}
    r = parse_runner_output(_text(HEADER, LOAD, it, SUMMARY), exit_code=0)
    assert not r.ok and "stdout line 3 (iteration)" in r.protocol_problems[0]
    with pytest.raises(RunnerError) as info:
        raise_for_result(r)
    assert info.value.exit_code == 14 and "stdout line 3" in info.value.message


def test_unknown_line_types_are_ignored_as_the_protocol_says():
    r = parse_runner_output(_text(HEADER, LOAD, {"type": "from-a-newer-runner", "x": 1}, SUMMARY), exit_code=0)
    assert r.ok and len(r.lines) == 4 and len(r.typed) == 3
