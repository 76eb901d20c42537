"""The SQLite results store: round trip, prefixes, migrations, refusal of newer schemas."""

from __future__ import annotations

import json
import sqlite3

import pytest

from edgerun.core.errors import UsageError
from edgerun.runtime.record import RunRecord
from edgerun.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, UnknownRun, default_store_path

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000


def _record(run_id, median_ms=5.0, **kw):
    return analyse_lines(runner_lines([int(median_ms * MS) + i for i in range(20)], warmup_ns=[9 * MS]), manifest(**kw),
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
    rec = analyse_lines(runner_lines([5 * MS] * 20), manifest(), HOST_INFO, sweep_id="s1", cell="tinynet/fp32/local")
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
    with pytest.raises(StoreError, match=f"migrating .* from schema 1 to {len(MIGRATIONS) + 1} failed"):
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


# ------------------------------------------------------------ a finished measurement is never lost
def _hold_exclusive(path):
    """Another connection holding the store's write lock (as a long sweep's commit or a stuck tool would)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_store_says_locked_not_a_bogus_migration(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).close()
    holder = _hold_exclusive(path)
    try:
        with pytest.raises(StoreError) as exc:
            Store(path, timeout=0.2)
        assert exc.value.exit_code == 7
        assert "locked" in exc.value.message and "0.2 s" in exc.value.message
        assert "migrating" not in exc.value.message and "schema 0" not in exc.value.message
    finally:
        holder.close()
    with Store(path) as s:
        assert s.schema_version() == SCHEMA_VERSION and len(s) == 0


def test_saving_into_a_store_locked_after_it_was_opened_is_a_store_error(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path, timeout=0.2) as s:
        holder = _hold_exclusive(path)
        try:
            with pytest.raises(StoreError, match="locked"):
                s.save(_record("r-1"))
        finally:
            holder.close()
        s.save(_record("r-1"))  # the failed attempt left nothing half-written
        assert s.get("r-1").run_id == "r-1"


def test_save_or_keep_writes_the_record_into_the_run_directory_and_import_brings_it_back(tmp_path):
    from edgerun.store import RecordKept, import_runs, save_or_keep

    path, run_dir = tmp_path / "r.sqlite", tmp_path / "runs" / "r-1"
    run_dir.mkdir(parents=True)
    Store(path).close()
    rec = _record("r-kept")
    holder = _hold_exclusive(path)
    try:
        with pytest.raises(RecordKept) as exc:
            save_or_keep(rec, path, run_dir, timeout=0.2)
    finally:
        holder.close()
    kept = run_dir / "record.json"
    assert exc.value.exit_code == 7 and exc.value.record_path == kept
    assert str(kept) in exc.value.message and "locked" in exc.value.message
    assert f"edgerun runs import {run_dir}" in exc.value.hint
    assert RunRecord.from_dict(json.loads(kept.read_text())) == rec  # the full record, every sample

    with Store(path) as s:
        assert len(s) == 0
        assert [(r["run_id"], r["status"]) for r in import_runs(s, [run_dir])] == [("r-kept", "imported")]
        assert s.get("r-kept") == rec
        # idempotent: a second import skips the stored run and changes nothing
        assert [(r["run_id"], r["status"]) for r in import_runs(s, [run_dir])] == [("r-kept", "skipped")]
        assert len(s) == 1


def test_save_or_keep_saves_normally_when_the_store_works(tmp_path):
    from edgerun.store import save_or_keep

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert save_or_keep(_record("r-ok"), tmp_path / "r.sqlite", run_dir) == "r-ok"
    assert not (run_dir / "record.json").exists()
    with Store(tmp_path / "r.sqlite") as s:
        assert s.get("r-ok").run_id == "r-ok"


def test_import_refuses_a_directory_without_a_record_before_importing_anything(tmp_path):
    from edgerun.store import import_runs

    good, empty = tmp_path / "good", tmp_path / "empty"
    good.mkdir(), empty.mkdir()
    (good / "record.json").write_text(json.dumps(_record("r-good").to_dict()))
    with Store(tmp_path / "r.sqlite") as s:
        with pytest.raises(UsageError, match=f"{empty} has no record.json"):
            import_runs(s, [good, empty])
        assert len(s) == 0


def _corrupt(path):
    """Overwrite every page after the first (schema) page with garbage: the header still says SQLite."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for i in range(page, len(data)):
        data[i] = (i * 7 + 13) & 0xFF
    path.write_bytes(bytes(data))


def test_a_store_with_corrupt_pages_is_a_store_error_and_the_record_is_kept(tmp_path):
    from edgerun.store import RecordKept, save_or_keep

    path = tmp_path / "r.sqlite"
    with Store(path) as s:
        for i in range(5):
            s.save(_record(f"r-{i}"))
    _corrupt(path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RecordKept) as exc:
        save_or_keep(_record("r-new"), path, run_dir)
    assert exc.value.exit_code == 7 and "damaged" in exc.value.message
    assert json.loads((run_dir / "record.json").read_text())["run_id"] == "r-new"
    with pytest.raises(StoreError, match="damaged"):
        with Store(path) as s:
            s.list()
            s.get("r-1")


def _open_fresh(path, barrier, errors):
    barrier.wait()
    try:
        Store(path).close()
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for attempt in range(40):
        path = tmp_path / f"fresh-{attempt}.sqlite"
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_open_fresh, args=(path, barrier, errors)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        with Store(path) as s:
            assert s.schema_version() == SCHEMA_VERSION
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
