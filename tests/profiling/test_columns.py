"""The column registry: every view of a run (flat row, store, compare, tables) derives from it."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from edgerun.runtime import columns
from edgerun.runtime.accuracy import AccuracyResult
from edgerun.runtime.columns import (
    COLUMNS, COMPARED, STORED, Unit, cap_name, device_label, format_bytes, format_ms, format_value,
)
from edgerun.runtime.record import _COMPARED, compare_records, flat_row
from edgerun.store import Store

from .conftest import HOST_INFO, QEMU_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000


def _rec(median_ms=5.0, *, info=HOST_INFO, run_id=None, device_name="local", **kw):
    rng = np.random.default_rng(3)
    ns = (median_ms * MS * (1 + 0.01 * rng.standard_normal(40))).astype(int)
    return analyse_lines(runner_lines(ns), manifest(**kw), info, run_id=run_id, device_name=device_name)


def _with_accuracy(r, **kw):
    base = dict(source=r.source, reference="eager (artifact test vectors)", outputs=(), vectors=1)
    return dataclasses.replace(r, accuracy=AccuracyResult(**{**base, **kw}))


def test_flat_row_is_the_registry_in_order(real_record):
    row = flat_row(real_record)
    assert list(row) == [c.name for c in COLUMNS]
    assert row["median_ms"] == real_record.latency.median_ms and row["device_name"] == "local"


def test_every_compared_metric_comes_from_the_registry_with_a_direction():
    assert _COMPARED == tuple((c.name, c.better) for c in COMPARED)
    assert {"median_ms", "cv", "min_snr_db", "accuracy_ok"} <= {name for name, _ in _COMPARED}
    with pytest.raises(ValueError, match="needs a better direction"):
        columns.Column("x_ms", Unit.MS, columns.Kind.LATENCY, lambda r: 1, compared=True)


def test_the_stores_indexed_columns_are_the_registrys_stored_columns(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        table = {row[1] for row in s._db.execute("PRAGMA table_info(runs)")}
    assert table - {"record_json"} == {c.sql for c in STORED}


def test_one_byte_formatter_with_one_rule():
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 12_345, 5 << 20, 123 << 20, 3 << 30)] == \
        ["0 B", "1023 B", "1.00 KiB", "1.50 KiB", "12.1 KiB", "5.00 MiB", "123 MiB", "3.00 GiB"]
    # every byte column is printed by it
    for c in COLUMNS:
        if c.unit == Unit.BYTES:
            assert c.format(12_345) == "12.1 KiB", c.name
    assert format_value("peak_rss_bytes", None) == "—"


def test_one_time_formatter_with_one_rule():
    assert [format_ms(x) for x in (0.012345, 1.23456, 99.9, 1234.56)] == ["0.01235", "1.235", "99.900", "1234.6"]
    assert all(c.format(1.23456) == "1.235" for c in COLUMNS if c.unit == Unit.MS)


def test_fractions_and_db_are_formatted_by_their_unit():
    assert format_value("cv", 0.0312) == "3.1%" and format_value("task_accuracy", 0.93) == "93.0%"
    assert format_value("min_snr_db", float("inf")) == "exact" and format_value("min_snr_db", 41.26) == "41.3"
    assert format_value("accuracy_ok", False) == "no"


def test_the_device_label_names_the_emulated_cpu():
    from edgerun.devices.info import DeviceInfo

    qemu = DeviceInfo(**{**QEMU_INFO, "emulator": "qemu-aarch64 -cpu max"})
    emulated, host = DeviceInfo(**QEMU_INFO), DeviceInfo(**HOST_INFO)
    assert device_label("qemu-aarch64://", qemu) == "qemu-aarch64://?cpu=max"
    assert device_label("qemu-aarch64://?cpu=cortex-a76", emulated) == "qemu-aarch64://?cpu=cortex-a76"
    assert device_label("pi5-qemu", emulated) == "pi5-qemu (cpu=cortex-a76)"
    assert device_label("local://", host) == "local://"
    r = _rec(info=qemu, device_name="qemu-aarch64://")
    assert flat_row(r)["device"] == "qemu-aarch64://?cpu=max" and flat_row(r)["device_name"] == "qemu-aarch64://"


def test_compare_gives_no_percentage_change_of_db_or_cv():
    a = _with_accuracy(_rec(5.0), task_accuracy=0.90)
    b = _with_accuracy(_rec(6.0), task_accuracy=0.95)
    c = compare_records(a, b)
    by = {m.metric: m for m in c.metrics}
    assert by["median_ms"].delta_rel == pytest.approx(0.2, abs=0.02) and by["median_ms"].unit == "ms"
    assert by["cv"].delta is not None and by["cv"].delta_rel is None
    assert by["task_accuracy"].delta == pytest.approx(0.05) and by["task_accuracy"].delta_rel is None
    from edgerun.report import fmt_change

    assert fmt_change(by["task_accuracy"]) == "+5.0 pp"
    assert fmt_change(by["median_ms"]).startswith("+") and fmt_change(by["median_ms"]).endswith("%")


def test_compare_counts_accuracy_regressions():
    a = _with_accuracy(_rec(5.0), passed=True, task_accuracy=0.95)
    b = _with_accuracy(_rec(5.0), passed=False, failures=("logits: SNR 12.0 dB < 20 dB",), task_accuracy=0.90)
    c = compare_records(a, b)
    assert len(c.accuracy_regressions) == 2, c.accuracy_regressions
    assert any("fails the artifact's accuracy thresholds" in x and "SNR 12.0 dB" in x for x in c.accuracy_regressions)
    assert any("task accuracy dropped 5.0 pp" in x for x in c.accuracy_regressions)
    assert sum(w.startswith("accuracy regression:") for w in c.warnings) == 2
    assert c.to_dict()["accuracy_regressions"] == list(c.accuracy_regressions)
    # the other way round is an improvement, not a regression
    assert compare_records(b, a).accuracy_regressions == ()


def test_accuracy_verdict_round_trips_and_is_stored(tmp_path):
    r = _with_accuracy(_rec(5.0, run_id="r-acc"), passed=False, failures=("top3: max abs 0.5 > 0.1",))
    assert flat_row(r)["accuracy_ok"] is False
    with Store(tmp_path / "r.sqlite") as s:
        s.save(r)
        assert s.get("r-acc").accuracy == r.accuracy
        assert s.list()[0]["accuracy_ok"] is False


def test_migration_3_backfills_the_device_label_of_old_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    r = _rec(info=QEMU_INFO, device_name="qemu-aarch64://", run_id="r-emu")
    with Store(path, target_version=2) as old:  # as edgerun wrote it before the registry
        old._db.execute("INSERT INTO runs (run_id, created_at, model, scheme, target, device, source, threads,"
                        " median_ms, p90_ms, p99_ms, record_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (r.run_id, r.created_at, "tinynet", "fp32", "host-x86_64", "qemu-aarch64://", "emulated", 2,
                         5.0, 5.0, 5.0, __import__("json").dumps(r.to_dict())))
    with Store(path) as s:
        row = s.list()[0]
    assert row["device"] == "qemu-aarch64://" and row["device_label"] == "qemu-aarch64://?cpu=cortex-a76"
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone()[0] == len(
        __import__("edgerun.store", fromlist=["MIGRATIONS"]).MIGRATIONS)


def test_long_group_names_are_capped_with_a_count_of_the_rest():
    name = "+".join(f"aten.op_number_{i}.default" for i in range(12))
    short = cap_name(name)
    assert len(short) <= 80 and short.endswith(" more)") and short.startswith("aten.op_number_0.default+")
    kept = short.split("…")[0].count("+") + 1
    assert short.endswith(f"(+{12 - kept} more)")
    assert cap_name("aten.add.Tensor") == "aten.add.Tensor"
    assert len(cap_name("x" * 200)) == 80
