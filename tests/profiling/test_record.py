"""Run records: analysed from runner lines, labelled, with provenance; failures are clear."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.runtime.record import (
    EMULATED, ESTIMATED, MEASURED, RunFailed, RunRecord, compare_records, flat_row, new_run_id,
)
from edgerun.runtime.protocol import RunnerError
from edgerun.runtime.stats import VERDICT_SAME, VERDICT_SLOWER

from .conftest import HOST_INFO, QEMU_INFO, TIMED, WARMUP, analyse_lines, manifest, runner_lines

MS = 1_000_000


def test_real_record_has_every_group_labelled_and_provenance(real_record):
    r = real_record
    assert r.run_id.startswith("r-") and len(r.run_id) == len("r-20261128-abcdef")
    assert len(r.samples) == WARMUP + TIMED and len(r.timed_execute_ns) == TIMED
    assert r.latency.n == TIMED and r.latency.min_ms <= r.latency.median_ms <= r.latency.max_ms
    assert r.labels["latency"] == MEASURED and r.labels["operators"] == MEASURED
    assert r.labels["memory.planned_bytes"] == ESTIMATED and r.labels["memory.peak_rss_bytes"] == MEASURED
    assert r.labels["accuracy"] == MEASURED
    p = r.provenance
    assert (p.runner_version, p.executorch_version, p.threads, p.artifact_executorch_version) == \
        ("0.1.0", "1.5.1", 2, "1.5.1")
    assert p.edgerun_version and p.git_commit  # this test runs from the git checkout
    assert r.model.recipe_hash == "abc123" and r.memory.peak_rss_bytes == 20480 * 1024
    assert r.memory.load_ms == pytest.approx(5.0)
    assert r.operators is not None and r.operators.iterations == TIMED
    assert r.accuracy.outputs[0].name == "top3" and r.accuracy.min_snr_db > 60


def test_record_round_trips_through_dict(real_record):
    assert RunRecord.from_dict(real_record.to_dict()) == real_record


def test_emulated_device_labels_timings_emulated_and_warns():
    r = analyse_lines(runner_lines([5 * MS] * 20), manifest(), QEMU_INFO, device_name="pi5-qemu")
    assert r.source == EMULATED and r.labels["latency"] == EMULATED
    assert r.labels["memory.peak_rss_bytes"] == EMULATED and r.labels["memory.pte_bytes"] == MEASURED
    assert any("emulated" in w for w in r.warnings)


def test_debug_build_and_version_mismatch_are_loud():
    lines = runner_lines([5 * MS] * 20, executorch_version="1.4.0")
    lines[0]["build"]["build_type"] = "Debug"
    r = analyse_lines(lines, manifest(), HOST_INFO)
    assert any("Debug build" in w for w in r.warnings)
    assert any("1.4.0 differs" in w for w in r.warnings)


def test_zero_successful_iterations_is_a_clear_failure():
    lines = runner_lines([])
    with pytest.raises(RunFailed, match="zero successful timed iterations"):
        analyse_lines(lines, manifest(), HOST_INFO)


def test_runner_error_line_is_reported_with_stage_and_log():
    lines = runner_lines([5 * MS] * 3)[:-1] + [{"type": "error", "stage": "execute", "error": "InvalidState",
                                                "code": 2, "message": "execute failed", "log": ["E boom"]}]
    # the one runner-failure message of protocol.runner_failure, as for local and device runs
    with pytest.raises(RunnerError, match=r"failed at execute with InvalidState: execute failed.*boom.*3 timed") as exc:
        analyse_lines(lines, manifest(), HOST_INFO)
    assert exc.value.stage == "run (execute)" and exc.value.exit_code == 12


def test_missing_summary_means_the_runner_was_killed():
    with pytest.raises(RunnerError, match="killed by signal 9") as exc:
        analyse_lines(runner_lines([5 * MS] * 3)[:-1], manifest(), HOST_INFO)
    assert exc.value.exit_code == 14


def test_unparseable_etdump_keeps_the_run_and_says_why(tmp_path):
    bad = tmp_path / "run.etdump"
    bad.write_bytes(b"garbage" * 50)
    r = analyse_lines(runner_lines([5 * MS] * 20), manifest(), HOST_INFO, etdump_path=bad)
    assert r.operators is None
    assert any("no operator table" in w and "does not parse" in w for w in r.warnings)


def test_flat_row_carries_units_in_names(real_record):
    row = flat_row(real_record)
    assert row["median_ms"] == real_record.latency.median_ms
    assert all(not k.endswith("_ns") for k in row)  # derived figures are ms / bytes / unitless
    assert row["op_coverage"] is not None and row["min_snr_db"] > 60


def test_run_ids_are_unique_enough():
    assert len({new_run_id() for _ in range(200)}) == 200


def test_two_interleaved_runs_of_the_same_program_are_no_significant_change(interleaved_runs):
    a_ns, b_ns = interleaved_runs
    a = analyse_lines(runner_lines(a_ns), manifest(), HOST_INFO)
    b = analyse_lines(runner_lines(b_ns), manifest(), HOST_INFO)
    c = compare_records(a, b)
    assert c.verdict == VERDICT_SAME, c.latency
    assert not any("different models" in w for w in c.warnings)


def test_a_slowed_run_is_called_slower_with_metric_deltas():
    rng = np.random.default_rng(0)
    base = (5 * MS * (1 + 0.02 * rng.standard_normal(100))).astype(int)
    a = analyse_lines(runner_lines(base), manifest(), HOST_INFO)
    b = analyse_lines(runner_lines((base * 1.2).astype(int), peak_rss_kb=40960), manifest(name="othernet"), HOST_INFO)
    c = compare_records(a, b)
    assert c.verdict == VERDICT_SLOWER
    assert any("different models" in w for w in c.warnings)
    rss = next(m for m in c.metrics if m.metric == "peak_rss_bytes")
    assert rss.delta_rel == pytest.approx(1.0)
    med = next(m for m in c.metrics if m.metric == "median_ms")
    assert med.delta_rel == pytest.approx(0.2, abs=0.02)


def test_a_verdict_between_unstable_runs_is_marked_unreliable():
    rng = np.random.default_rng(1)
    steady = (5 * MS * (1 + 0.02 * rng.standard_normal(100))).astype(int)
    busy = (np.linspace(6, 9, 100) * MS).astype(int)  # drifting: another job took the CPU
    c = compare_records(analyse_lines(runner_lines(steady), manifest(), HOST_INFO),
                        analyse_lines(runner_lines(busy), manifest(), HOST_INFO))
    assert c.verdict == VERDICT_SLOWER and not c.reliable
    assert any("unreliable" in w for w in c.warnings)
    c2 = compare_records(analyse_lines(runner_lines(steady), manifest(), HOST_INFO),
                         analyse_lines(runner_lines((steady * 1.3).astype(int)), manifest(), HOST_INFO))
    assert c2.verdict == VERDICT_SLOWER and c2.reliable
