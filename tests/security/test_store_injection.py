"""The results store treats what it is given as data: names that look like SQL stay names, and a
record kept in a run directory is never written through a link planted there."""

from __future__ import annotations

import json
import sqlite3

import pytest

from edgerun.store import RecordKept, Store, import_runs, save_or_keep

from ..profiling.conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000
EVIL = "x'); DROP TABLE runs; --"


def _rec(run_id, **kw):
    return analyse_lines(runner_lines([5 * MS] * 12), manifest(**kw), HOST_INFO, run_id=run_id)


def test_names_that_look_like_sql_are_stored_and_filtered_as_data(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as s:
        s.save(_rec("r-1", name=EVIL))
        s.save(_rec("r-2"))
        assert [r["run_id"] for r in s.list(model=EVIL)] == ["r-1"]
        assert s.list(device="local' OR '1'='1") == []
        assert s.list(model="%") == []  # no pattern matching on filters
        assert s.get("r-1").model.name == EVIL and len(s) == 2
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "samples", "operators", "schema_version"} <= tables


def test_a_kept_record_is_not_written_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json.part").symlink_to(victim)
    store = tmp_path / "newer.sqlite"
    with Store(store) as s:
        s._db.execute("UPDATE schema_version SET version = 999")  # a store this edgerun refuses
    with pytest.raises(RecordKept):
        save_or_keep(_rec("r-kept"), store, run_dir)
    assert victim.read_text() == "precious"
    assert json.loads((run_dir / "record.json").read_text())["run_id"] == "r-kept"
    assert not (run_dir / "record.json").is_symlink()
    with Store(tmp_path / "ok.sqlite") as s:
        assert import_runs(s, [run_dir])[0]["status"] == "imported"
