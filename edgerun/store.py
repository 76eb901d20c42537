"""The results store: SQLite (standard library), one row per run plus its samples and operator rows.

Location: ``EDGERUN_HOME/results.sqlite`` unless a path is given (``--store PATH``). The schema is
versioned: ``schema_version`` holds the version, :data:`MIGRATIONS` lists the steps from an empty
file to the current schema, and opening a store applies the missing steps in one transaction. A
store written by a newer edgerun is refused, never guessed at. All SQL is parameterised.

The ``runs`` row keeps the columns people filter and sort on, plus the whole record as JSON with
the samples and operator rows taken out (they live in their own tables, one row each).
"""

from __future__ import annotations

import json
import sqlite3
import contextlib
from pathlib import Path
from typing import Iterator

from edgerun.core.paths import edgerun_home
from edgerun.core.errors import EdgerunError, StoreError, UnknownRun
from edgerun.runtime.record import RunRecord

STORE_FILENAME = "results.sqlite"

# Each step takes the store from version i to i+1. Never edit a released step; append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: runs, raw samples, operator rows.
    """
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        created_at  TEXT NOT NULL,
        model       TEXT NOT NULL,
        scheme      TEXT,
        target      TEXT,
        device      TEXT NOT NULL,
        source      TEXT NOT NULL,
        threads     INTEGER,
        median_ms   REAL NOT NULL,
        p90_ms      REAL NOT NULL,
        p99_ms      REAL NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE TABLE samples (
        run_id      TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        warmup      INTEGER NOT NULL,
        idx         INTEGER NOT NULL,
        execute_ns  INTEGER NOT NULL,
        wall_ns     INTEGER,
        PRIMARY KEY (run_id, warmup, idx)
    );
    CREATE TABLE operators (
        run_id      TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        level       TEXT NOT NULL,          -- 'rows' (top level) or 'delegate_ops'
        position    INTEGER NOT NULL,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        delegated   INTEGER NOT NULL,
        backend     TEXT,
        count       INTEGER NOT NULL,
        median_ms   REAL NOT NULL,
        share       REAL NOT NULL,
        op_types    TEXT NOT NULL,          -- JSON list
        samples_ms  TEXT NOT NULL,          -- JSON list, one per timed iteration
        PRIMARY KEY (run_id, level, position)
    );
    """,
    # 2: bench sweeps resume by (sweep_id, cell); listing sorts by time.
    """
    ALTER TABLE runs ADD COLUMN sweep_id TEXT;
    ALTER TABLE runs ADD COLUMN cell TEXT;
    CREATE INDEX runs_by_sweep ON runs(sweep_id, cell);
    CREATE INDEX runs_by_time ON runs(created_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def default_store_path() -> Path:
    return edgerun_home() / STORE_FILENAME


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class Store:
    """``with Store() as store: run_id = store.save(record)``."""

    def __init__(self, path: str | Path | None = None, *, target_version: int = SCHEMA_VERSION):
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode; writes go through _tx() so DDL (migrations) is transactional too.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 10000")  # a sweep and a `runs list` may overlap
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} cannot be opened as a results store ({exc}).",
                             hint="Point --store at another file or move this one away.") from exc
        self._migrate(target_version)

    # -- lifecycle
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- schema
    def schema_version(self) -> int:
        try:
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # no such table: an empty (new) file
            return 0
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a results store ({exc}).",
                             hint="Point --store at another file or move this one away.") from exc
        return int(row[0]) if row else 0

    def _migrate(self, target: int) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this edgerun understands ({SCHEMA_VERSION}).",
                hint="Upgrade edgerun, or use --store to point at another results store.")
        if current >= target:
            return
        try:
            with self._tx():  # one transaction: all steps or none
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                for step in MIGRATIONS[current:target]:
                    for statement in filter(str.strip, step.split(";")):
                        self._db.execute(statement)
                self._db.execute("DELETE FROM schema_version")
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"migrating {self.path} from schema {current} to {target} failed ({exc}).",
                             hint="The file is unchanged; use --store to point at another results store.") from exc

    # -- writing
    def save(self, record: RunRecord) -> str:
        d = record.to_dict()
        d.pop("samples")
        ops = d.get("operators")
        if ops is not None:
            ops = dict(ops)
            ops.pop("rows")
            ops.pop("delegate_ops")
            d["operators"] = ops
        if self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (record.run_id,)).fetchone():
            raise StoreError(f"a run {record.run_id} is already in {self.path}; runs are never overwritten.",
                             hint="Give the record a new run id (edgerun.runtime.record.new_run_id()).")
        with self._tx():
            self._db.execute(
                "INSERT INTO runs (run_id, created_at, model, scheme, target, device, source, threads, median_ms,"
                " p90_ms, p99_ms, record_json, sweep_id, cell) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.run_id, record.created_at, record.model.name, record.model.scheme, record.model.target,
                 record.device_name, record.source, record.provenance.threads, record.latency.median_ms,
                 record.latency.p90_ms, record.latency.p99_ms, json.dumps(d, default=_json_default),
                 record.sweep_id, record.cell))
            self._db.executemany(
                "INSERT INTO samples (run_id, warmup, idx, execute_ns, wall_ns) VALUES (?,?,?,?,?)",
                [(record.run_id, int(s.warmup), s.index, s.execute_ns, s.wall_ns) for s in record.samples])
            if record.operators is not None:
                self._db.executemany(
                    "INSERT INTO operators (run_id, level, position, name, kind, delegated, backend, count,"
                    " median_ms, share, op_types, samples_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(record.run_id, level, i, r.name, r.kind, int(r.delegated), r.backend, r.count, r.median_ms,
                      r.share, json.dumps(list(r.op_types)), json.dumps(list(r.samples_ms)))
                     for level, rows in (("rows", record.operators.rows),
                                         ("delegate_ops", record.operators.delegate_ops))
                     for i, r in enumerate(rows)])
        return record.run_id

    def delete(self, run_id: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM runs WHERE run_id = ?", (self.resolve(run_id),))

    # -- reading
    def resolve(self, run_id: str) -> str:
        """The full id of the one run whose id starts with ``run_id``."""
        if not run_id:
            raise UnknownRun("an empty run id.", hint="List runs with `edgerun runs list`.")
        escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = [r[0] for r in self._db.execute(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY created_at LIMIT 6",
            (escaped + "%",))]
        if not rows:
            raise UnknownRun(f"no run '{run_id}' in {self.path}.",
                             hint="List runs with `edgerun runs list` (or pass the right --store).")
        if run_id in rows:
            return run_id
        if len(rows) > 1:
            more = ", ..." if len(rows) > 5 else ""
            raise UnknownRun(f"'{run_id}' matches several runs ({', '.join(rows[:5])}{more}).",
                             hint="Type more of the id.")
        return rows[0]

    def get(self, run_id: str) -> RunRecord:
        full = self.resolve(run_id)
        (blob,) = self._db.execute("SELECT record_json FROM runs WHERE run_id = ?", (full,)).fetchone()
        d = json.loads(blob)
        d["samples"] = [
            {"index": idx, "warmup": bool(w), "execute_ns": e, "wall_ns": wall}
            for w, idx, e, wall in self._db.execute(
                "SELECT warmup, idx, execute_ns, wall_ns FROM samples WHERE run_id = ? ORDER BY warmup DESC, idx",
                (full,))]
        if d.get("operators") is not None:
            for level in ("rows", "delegate_ops"):
                d["operators"][level] = [
                    {"name": n, "kind": k, "delegated": bool(dl), "backend": b, "count": c, "median_ms": m,
                     "share": s, "op_types": json.loads(ot), "samples_ms": json.loads(sm)}
                    for n, k, dl, b, c, m, s, ot, sm in self._db.execute(
                        "SELECT name, kind, delegated, backend, count, median_ms, share, op_types, samples_ms"
                        " FROM operators WHERE run_id = ? AND level = ? ORDER BY position", (full, level))]
        return RunRecord.from_dict(d)

    def list(self, *, model: str | None = None, device: str | None = None, sweep_id: str | None = None,
             limit: int | None = 50) -> list[dict]:
        """Newest first; each a small dict of the indexed columns."""
        sql = ("SELECT run_id, created_at, model, scheme, target, device, source, threads, median_ms, p90_ms,"
               " p99_ms, sweep_id, cell FROM runs WHERE 1=1")
        args: list = []
        for column, value in (("model", model), ("device", device), ("sweep_id", sweep_id)):
            if value is not None:
                sql += f" AND {column} = ?"  # column names are from the fixed tuple above, values bound
                args.append(value)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        keys = ("run_id", "created_at", "model", "scheme", "target", "device", "source", "threads", "median_ms",
                "p90_ms", "p99_ms", "sweep_id", "cell")
        return [dict(zip(keys, row)) for row in self._db.execute(sql, args)]

    def find_cell(self, sweep_id: str, cell: str) -> str | None:
        """The run id of a finished bench cell, so a resumed sweep can skip it."""
        row = self._db.execute("SELECT run_id FROM runs WHERE sweep_id = ? AND cell = ? ORDER BY created_at DESC",
                               (sweep_id, cell)).fetchone()
        return row[0] if row else None

    def __iter__(self) -> Iterator[dict]:
        return iter(self.list(limit=None))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def open_store(path: str | Path | None = None) -> Store:
    return Store(path)


__all__ = ["Store", "StoreError", "UnknownRun", "SCHEMA_VERSION", "MIGRATIONS", "default_store_path", "open_store"]
