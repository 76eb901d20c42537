"""The runner's lines, typed once: what does not fit the protocol is a problem kept on the result
(and a RunnerError with the runner-died code), never a crash further on."""

from __future__ import annotations

import json

import pytest

from edgerun.core.errors import RunnerError
from edgerun.runtime.protocol import (Header, Iteration, Summary, ThreadsAuto, ThreadTrial, XnnpackOptions,
                                      parse_runner_output, raise_for_result)

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


def test_the_header_types_its_backend_options_and_thread_trial():
    trial = {"chosen": 1, "measure": "decode", "prompt_tokens": 4, "decode_steps": 8,
             "trials": [{"threads": 2, "median_ns": 330}, {"threads": 1, "median_ns": 300}]}
    head = {**HEADER, "xnnpack": {"workspace_sharing": "global", "weight_cache": False, "reshape": "on-change"},
            "threads_auto": trial}
    r = parse_runner_output(_text(head, LOAD, SUMMARY), exit_code=0)
    assert r.ok, r.protocol_problems
    assert r.header.xnnpack == XnnpackOptions(workspace_sharing="global", weight_cache=False, reshape="on-change")
    auto = r.header.threads_auto
    assert auto == ThreadsAuto(chosen=1, measure="decode", prompt_tokens=4, decode_steps=8,
                               trials=(ThreadTrial(2, 330), ThreadTrial(1, 300)))
    assert auto.median_by_threads() == {2: 330, 1: 300} and auto.to_json() == trial
    # a runner before --xnnpack-reshape and before the decode trial: the newer fields are None
    old = {**HEADER, "xnnpack": {"workspace_sharing": "global", "weight_cache": True},
           "threads_auto": {"chosen": 2, "trials": [{"threads": 2, "median_ns": 5}]}}
    h = parse_runner_output(_text(old, LOAD, SUMMARY), exit_code=0).header
    assert h.xnnpack.reshape is None and h.threads_auto.measure is None and h.threads_auto.to_json()["chosen"] == 2


@pytest.mark.parametrize("bad", [{"xnnpack": {"workspace_sharing": "global", "weight_cache": "yes"}},
                                 {"xnnpack": {"workspace_sharing": 2, "weight_cache": True}},
                                 {"xnnpack": {"workspace_sharing": "global", "operator_timer": "off"}},
                                 {"threads_auto": {"chosen": 1, "trials": [{"threads": 0, "median_ns": 5}]}},
                                 {"threads_auto": {"chosen": 1, "trials": ["fast"]}},
                                 {"threads_auto": {"trials": []}}])
def test_a_malformed_header_option_is_a_protocol_problem(bad):
    r = parse_runner_output(_text({**HEADER, **bad}, LOAD, SUMMARY), exit_code=0)
    assert not r.ok and "stdout line 1 (header)" in r.protocol_problems[0]
