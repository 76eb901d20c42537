"""The SQLite results store: round trip, prefixes, migrations, refusal of newer schemas."""

from __future__ import annotations

import sqlite3

import pytest

from edgerun.runtime.record import analyse
from edgerun.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, UnknownRun, default_store_path

from .conftest import HOST_INFO, manifest, runner_lines

MS = 1_000_000


def _record(run_id, median_ms=5.0, **kw):
    return analyse(runner_lines([int(median_ms * MS) + i for i in range(20)], warmup_ns=[9 * MS]), manifest(**kw),
                   HOST_INFO, run_id=run_id)


def test_default_location_is_under_edgerun_home(edgerun_home):
    assert default_store_path() == edgerun_home / "results.sqlite"
    with Store() as s:
        assert s.path == edgerun_home / "results.sqlite" and s.schema_version() == SCHEMA_VERSION


def test_real_record_round_trips_with_samples_and_operator_rows(tmp_path, real_record):
    with Store(tmp_path / "r.sqlite") as s:
        assert s.save(real_record) == real_record.run_id
        assert s.get(real_record.run_id) == real_record
    db = sqlite3.connect(tmp_path / "r.sqlite")
    n_samples = db.execute("SELECT COUNT(*) FROM samples WHERE run_id = ?", (real_record.run_id,)).fetchone()[0]
    n_ops = db.execute("SELECT COUNT(*) FROM operators WHERE run_id = ?", (real_record.run_id,)).fetchone()[0]
    assert n_samples == len(real_record.samples)
    assert n_ops == len(real_record.operators.rows) + len(real_record.operators.delegate_ops)


def test_unique_prefix_resolves_and_ambiguous_or_unknown_ids_are_clear(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.save(_record("r-20261128-aaa111"))
        s.save(_record("r-20261128-aab222"))
        assert s.get("r-20261128-aaa").run_id == "r-20261128-aaa111"
        with pytest.raises(UnknownRun, match="matches several runs"):
            s.get("r-20261128-aa")
        with pytest.raises(UnknownRun, match="no run 'r-1999'") as exc:
            s.get("r-1999")
        assert "edgerun runs list" in exc.value.hint
        with pytest.raises(UnknownRun):
            s.get("r-2026112_")  # LIKE wildcards are literal


def test_list_is_newest_first_and_filters(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.save(_record("r-1", name="a"))
        s.save(_record("r-2", name="b"))
        assert [r["run_id"] for r in s.list()] == ["r-2", "r-1"]
        assert [r["run_id"] for r in s.list(model="a")] == ["r-1"]
        assert len(s) == 2


def test_sweep_cells_can_be_found_for_resume(tmp_path):
    rec = analyse(runner_lines([5 * MS] * 20), manifest(), HOST_INFO, sweep_id="s1", cell="tinynet/fp32/local")
    with Store(tmp_path / "r.sqlite") as s:
        s.save(rec)
        assert s.find_cell("s1", "tinynet/fp32/local") == rec.run_id
        assert s.find_cell("s1", "tinynet/int8/local") is None


def test_delete_cascades_to_samples(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.save(_record("r-1"))
        s.delete("r-1")
        assert len(s) == 0
        assert s._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0


def test_an_old_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    with Store(path, target_version=1) as old:
        assert old.schema_version() == 1
        # a version-1 store has no sweep columns: write a run the way version 1 did
        old._db.execute("INSERT INTO runs (run_id, created_at, model, device, source, median_ms, p90_ms, p99_ms,"
                        " record_json) VALUES (?,?,?,?,?,?,?,?,?)",
                        ("r-old", "2026-01-01T00:00:00+00:00", "m", "local", "measured", 1.0, 1.0, 1.0, "{}"))
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        assert s.list()[0]["run_id"] == "r-old" and s.list()[0]["sweep_id"] is None


def test_a_store_from_a_newer_edgerun_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    with Store(path) as s:
        s._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than") as exc:
        Store(path)
    assert "--store" in exc.value.hint
    assert path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a database" * 100)
    with pytest.raises(StoreError, match="not a results store|cannot be opened"):
        Store(path)


def test_a_failed_migration_leaves_the_file_unchanged(tmp_path, monkeypatch):
    import edgerun.store as store_mod

    path = tmp_path / "s.sqlite"
    Store(path, target_version=1).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", MIGRATIONS + ("CREATE TABLE broken (",))
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    with pytest.raises(StoreError, match="migrating .* from schema 1 to 3 failed"):
        store_mod.Store(path, target_version=len(MIGRATIONS) + 1)
    with Store(path, target_version=1) as s:
        assert s.schema_version() == 1
        cols = [r[1] for r in s._db.execute("PRAGMA table_info(runs)")]
        assert "sweep_id" not in cols  # step 2 was rolled back with the broken step 3


def test_a_run_is_never_overwritten(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.save(_record("r-1", median_ms=5.0))
        with pytest.raises(StoreError, match="already in"):
            s.save(_record("r-1", median_ms=9.0))
        assert s.get("r-1").latency.median_ms == pytest.approx(5.0, rel=0.01)
