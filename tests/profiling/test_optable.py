"""Per-operator tables from a real ETDump + ETRecord through ExecuTorch's Inspector."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgerun.runtime.optable import (
    KIND_DELEGATE_CALL, KIND_DELEGATE_OP, KIND_OPERATOR, ProfilingError, operator_table,
)

from .conftest import TIMED, WARMUP  # noqa: F401  (importlib mode: resolved relative to this folder)


@pytest.fixture(scope="module")
def profile(profiled_program):
    return operator_table(profiled_program.etdump, profiled_program.etrecord, skip_runs=WARMUP)


def test_rows_name_operators_and_delegate_calls_with_backends(profile):
    by_kind = {}
    for r in profile.rows:
        by_kind.setdefault(r.kind, []).append(r)
    assert {r.name for r in by_kind[KIND_OPERATOR]} == {"aten.mean.dim", "aten.topk.default"}
    calls = by_kind[KIND_DELEGATE_CALL]
    assert len(calls) == 2 and all(r.backend == "XnnpackBackend" and r.delegated for r in calls)
    assert any("aten.convolution.default" in r.op_types for r in calls)
    assert all(not r.delegated and r.backend is None for r in by_kind[KIND_OPERATOR])
    # XNNPACK's own events are a breakdown, kept out of the top level, instance numbers folded.
    assert all(r.kind == KIND_DELEGATE_OP for r in profile.delegate_ops)
    conv = [r for r in profile.delegate_ops if r.name.startswith("Convolution")]
    assert conv and sum(r.count for r in conv) == 2 and not any("#" in r.name for r in conv)


def test_warmup_runs_are_dropped_and_every_iteration_kept(profile):
    assert profile.iterations == TIMED and profile.skipped_runs == WARMUP
    assert all(len(r.samples_ms) == TIMED for r in profile.rows + profile.delegate_ops)


def test_rows_are_sorted_and_shares_add_up(profile):
    medians = [r.median_ms for r in profile.rows]
    assert medians == sorted(medians, reverse=True)
    # each share is the row's median over the median of the per-iteration totals; the totals are the rows' sum
    # iteration by iteration (the shares' sum is near 1 only on a quiet machine: a sum of medians)
    per_iteration = np.sum([r.samples_ms for r in profile.rows], axis=0)
    assert profile.op_sum_ms == pytest.approx(float(np.median(per_iteration)), rel=1e-9)
    assert all(r.share == pytest.approx(r.median_ms / profile.op_sum_ms, rel=1e-9) for r in profile.rows)
    assert all(len(r.samples_ms) == profile.iterations for r in profile.rows)
    assert profile.top(2) == profile.rows[:2]


def test_operator_times_account_for_the_method_execute_time(profile):
    # The top-level rows tile Method::execute: what remains is the executor's own bookkeeping.
    assert profile.method_execute_ms is not None
    assert 0.9 <= profile.op_sum_ms / profile.method_execute_ms <= 1.0 + 1e-9


def test_coverage_against_a_measured_execute_time_is_reported_and_flagged(profiled_program, profile):
    ok = operator_table(profiled_program.etdump, profiled_program.etrecord, skip_runs=WARMUP,
                        measured_execute_ms=profile.op_sum_ms * 1.02)
    assert ok.coverage == pytest.approx(1 / 1.02) and not ok.warnings
    far = operator_table(profiled_program.etdump, profiled_program.etrecord, skip_runs=WARMUP,
                         measured_execute_ms=profile.op_sum_ms * 2)
    assert any("add up to 50%" in w for w in far.warnings)


def test_without_etrecord_names_fall_back_to_kernels(profiled_program):
    p = operator_table(profiled_program.etdump, None, skip_runs=WARMUP)
    names = {r.name for r in p.rows if r.kind == KIND_OPERATOR}
    assert names == {"mean.out", "topk.values"}
    assert any("no ETRecord" in w for w in p.warnings)


def test_round_trip_through_dict(profile):
    from edgerun.runtime.optable import OperatorProfile

    assert OperatorProfile.from_dict(profile.to_dict()) == profile


def test_unparseable_etdump_is_a_clear_error(tmp_path, profiled_program):
    bad = tmp_path / "bad.etdump"
    bad.write_bytes(b"this is not a flatbuffer" * 20)
    with pytest.raises(ProfilingError, match=r"ETDump .*bad\.etdump does not parse"):
        operator_table(bad, profiled_program.etrecord)


def test_truncated_etdump_is_a_clear_error(tmp_path, profiled_program):
    cut = tmp_path / "cut.etdump"
    cut.write_bytes(profiled_program.etdump.read_bytes()[:100])
    with pytest.raises(ProfilingError, match="does not parse"):
        operator_table(cut)


def test_missing_or_empty_files_are_named(tmp_path, profiled_program):
    with pytest.raises(ProfilingError, match="does not exist"):
        operator_table(tmp_path / "nope.etdump")
    (tmp_path / "empty.etrecord").write_bytes(b"")
    with pytest.raises(ProfilingError, match="ETRecord .*empty"):
        operator_table(profiled_program.etdump, tmp_path / "empty.etrecord")


def test_corrupt_etrecord_is_named(tmp_path, profiled_program):
    bad = tmp_path / "model.etrecord"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ProfilingError, match=r"ETRecord .*does not parse"):
        operator_table(profiled_program.etdump, bad)


def test_skip_runs_must_leave_a_run(profiled_program):
    with pytest.raises(ProfilingError, match="leaves no run"):
        operator_table(profiled_program.etdump, skip_runs=WARMUP + TIMED)


def test_tables_can_be_built_from_several_threads_at_once(profiled_program, profile):
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return operator_table(profiled_program.etdump, profiled_program.etrecord, skip_runs=WARMUP)

    with ThreadPoolExecutor(max_workers=3) as pool:
        tables = list(pool.map(one, range(3)))
    assert all(t.rows == profile.rows for t in tables)


def test_delegate_op_counts_are_per_node_not_per_debug_handle():
    """A delegate call whose debug handles name a node twice (a BatchNorm fused into its conv is listed
    with both handles) must count each node once: 18 BatchNorms were shown as x36."""
    from types import SimpleNamespace

    from edgerun.runtime.optable import _op_label, unique_op_types

    node_ops = {f"conv_{i}": "aten.convolution.default" for i in range(3)}
    node_ops.update({f"bn_{i}": "aten._native_batch_norm_legit_no_training.default" for i in range(3)})
    event = SimpleNamespace(op_types=["aten.convolution.default", "aten._native_batch_norm_legit_no_training.default"] * 6,
                            stack_traces={name: None for name in node_ops})
    ops = unique_op_types(event, node_ops)
    assert sorted(ops).count("aten.convolution.default") == 3 and len(ops) == 6
    assert _op_label(ops) == "convolution×3+_native_batch_norm_legit_no_training×3"
    # without an ETRecord's graphs the Inspector's own list is all there is
    assert unique_op_types(event, {}) == event.op_types


def test_real_delegate_labels_count_each_node_once(real_record):
    rows = [r for r in real_record.operators.rows if r.delegated]
    # the program's conv+relu and linear lower to XNNPACK: without delegated rows the loop below checks nothing
    assert rows, [r.name for r in real_record.operators.rows]
    for r in rows:
        assert len(r.op_types) == len(set(r.op_types)) or "×" in r.name  # counted per node
