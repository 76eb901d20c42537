"""The hall's cell: one key for every kind of run (the keys stored before this type existed stay the same),
and a results store that cannot take a record fails before any device or export work."""

from __future__ import annotations

import pytest

from edgerun.cells import Cell, check_store
from edgerun.core.errors import StoreError, StoreLocked
from edgerun.runtime.record import cell_key
from edgerun.store import SCHEMA_VERSION, Store


def test_cell_keys_are_the_keys_stored_before():
    assert Cell("m", "local://", 0, target="host", recipe="int8").key == cell_key("m", "host", "int8", "local://", 0)
    assert Cell("m", "pi", None, target="rpi5", recipe="fp32").key == "m/rpi5/fp32/pi/tdefault"
    assert Cell("m", "pi", "auto", target="rpi5", recipe="8da4w:group_size=64").key == "m/rpi5/8da4w:group_size=64/pi/tauto"
    assert Cell("smol", "local://", 2, test="tg32").key == "smol/tg32/local:///t2"
    assert Cell("m", "d", 1, target="t", recipe="a").key != Cell("m", "d", 1, target="t", recipe="b").key


@pytest.fixture
def newer_store(tmp_path):
    path = tmp_path / "new.sqlite"
    with Store(path) as s:
        s._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    return path


def test_a_newer_store_is_refused_before_anything_runs(newer_store, tmp_path, edgerun_home):
    with pytest.raises(StoreError, match="newer than"):
        check_store(newer_store)
    check_store(tmp_path / "fresh.sqlite")  # a new store is made, a good one passes
    assert (tmp_path / "fresh.sqlite").is_file()


def test_finetune_refuses_a_newer_store_before_it_exports_or_trains(newer_store, edgerun_home):
    from edgerun.finetune import FinetuneSettings, finetune
    from edgerun.runtime.train import TrainRequest

    runs = edgerun_home / "runs"
    before = sorted(runs.iterdir()) if runs.is_dir() else []
    said: list[str] = []
    with pytest.raises(StoreError, match="newer than"):
        finetune("digits_cnn", "local://", TrainRequest(steps=1), FinetuneSettings(batch=4), store_path=newer_store,
                 on_progress=said.append)
    assert said == []  # not even the model was built
    assert (sorted(runs.iterdir()) if runs.is_dir() else []) == before


def test_a_store_locked_by_another_process_is_let_through(tmp_path):
    """Locked is a passing state: the record is saved at the end, or kept in its run directory."""
    import sqlite3

    path = tmp_path / "busy.sqlite"
    with Store(path):
        pass
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreLocked):
            Store(path, timeout=0.1)  # the lock is real
        check_store(path)  # waits its short timeout, then lets the run go on
    finally:
        holder.execute("ROLLBACK")
        holder.close()
