"""Progress of a long stage and the artifact directory under signals: a fraction reported deep inside a
stage reaches the caller's ``on_progress`` with the stage's name; the CLI shows it as plain lines every
tenth when stderr is piped; a SIGTERM while the artifact is assembled removes its temporary directory."""

from __future__ import annotations

import os
import signal
import time

import pytest

from edgerun.export.stages import Plan, Progress, Stage, Terminated, Work, artifact_dir, report_progress


def test_a_fraction_reported_inside_a_stage_reaches_on_progress_with_the_stage_name():
    got = []

    def quantize(w):
        for i in range(4):
            report_progress(i + 1, 4, f"layer {i + 1}/4")
        w.module = "q"

    progress = Progress(on_progress=lambda name, fraction, detail: got.append((name, fraction, detail)))
    Plan([Stage("quantize", quantize, makes=("module",))], given=()).run(Work(), progress)
    assert got == [("quantize", 0.25, "layer 1/4"), ("quantize", 0.5, "layer 2/4"), ("quantize", 0.75, "layer 3/4"),
                   ("quantize", 1.0, "layer 4/4")]
    report_progress(1, 2, "outside any stage")      # nothing to report to: ignored
    assert len(got) == 4


def test_piped_progress_is_a_line_per_tenth_at_most_every_interval(capsys):
    from edgerun.cli._common import StageProgress

    now = [0.0]
    shown = StageProgress("export", None, interval=10.0, clock=lambda: now[0])
    shown.started("lower")
    for i in range(1, 101):          # 100 partitions, one a second
        now[0] = float(i)
        shown.fraction("lower", i / 100, f"partition {i}/100")
    shown.done("lower", 100.0)
    lines = capsys.readouterr().err.splitlines()
    # the first report at once, then one per tenth passed, each at least 10 s after the previous line
    assert lines[0] == "export: lower 1% (partition 1/100) 1 s"
    assert lines[1:-1] == [f"export: lower {p}% (partition {p}/100) {p} s" for p in range(11, 100, 10)]
    assert lines[-1] == "export: lower … 100.0 s"


def test_sigterm_while_an_artifact_is_assembled_removes_its_temporary_directory(tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process has its own SIGTERM handler")
    out = tmp_path / "art"
    with pytest.raises(Terminated):
        with artifact_dir(out, overwrite=True) as tmp:
            (tmp / "model.pte").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)    # a real signal; its handler raises at the next bytecode
            time.sleep(5)
    assert list(tmp_path.iterdir()) == []           # neither the artifact nor a hidden .art.partial-*
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is put back
