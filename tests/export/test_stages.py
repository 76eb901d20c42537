"""The stage runner both exports share: a plan is checked before anything runs, progress is reported
through the caller's callbacks, and an unexpected failure names its stage."""

from __future__ import annotations

import pytest

from edgerun.core.errors import ExportError
from edgerun.export.stages import Plan, Progress, Stage, Work


def test_a_plan_whose_stage_needs_what_nothing_makes_is_refused_before_it_runs():
    ran = []
    stages = [Stage("load", lambda w: ran.append("load"), needs=("spec",), makes=("module",)),
              Stage("lower", lambda w: ran.append("lower"), needs=("exported",), makes=("program",))]
    with pytest.raises(ExportError) as info:
        Plan(stages, given=("spec",))
    assert "stage 'lower' needs exported" in info.value.message and "load -> lower" in info.value.message
    assert ran == []


def test_a_plan_runs_its_stages_in_order_reporting_each():
    started, done, warned = [], [], []

    def load(w):
        w.module = "m"

    def quantize(w):
        w.progress.warn("did little")
        w.module = w.module + "q"

    plan = Plan([Stage("load", load, needs=("spec",), makes=("module",)),
                 Stage("quantize", quantize, needs=("module",), makes=("module",)),
                 Stage("skipped", lambda w: 1 / 0, skip=lambda w: True)], given=("spec", "progress"))
    progress = Progress(started.append, lambda n, s: done.append(n), warned.append)
    w = Work(spec="s", progress=progress)
    plan.run(w, progress)
    assert w.module == "mq" and started == done == ["load", "quantize"] and warned == progress.warnings == ["did little"]
    assert set(progress.times) == {"load", "quantize"}


def test_a_failing_stage_is_an_export_error_naming_it_and_a_stage_must_make_what_it_says():
    progress = Progress()
    with pytest.raises(ExportError) as info:
        Plan([Stage("lower", lambda w: 1 / 0)], given=()).run(Work(), progress)
    assert info.value.stage == "lower" and "ZeroDivisionError" in info.value.message
    with pytest.raises(ExportError, match="did not make program"):
        Plan([Stage("lower", lambda w: None, makes=("program",))], given=()).run(Work(), progress)
