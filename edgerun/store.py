"""The results store: SQLite (standard library), one row per run plus its samples and operator rows.

Location: ``EDGERUN_HOME/results.sqlite`` unless a path is given (``--store PATH``). The schema is
versioned: ``schema_version`` holds the version, :data:`MIGRATIONS` lists the steps from an empty
file to the current schema, and opening a store applies the missing steps in one ``BEGIN
IMMEDIATE`` transaction that re-reads the version first (two processes creating one store at once
both succeed). A store written by a newer edgerun is refused, never guessed at. All SQL is
parameterised.

The ``runs`` row keeps the columns people filter and sort on -- the registry's stored columns
(:data:`edgerun.runtime.columns.STORED`) -- plus the whole record as JSON with the samples and
operator rows taken out (they live in their own tables, one row each).

Every SQLite failure is a :class:`StoreError` (exit 7) that says what happened: locked by another
process (after waiting ``timeout`` seconds, default :data:`DEFAULT_TIMEOUT_S` or
``$EDGERUN_STORE_TIMEOUT``), damaged, read-only, full. A measurement is never lost to one:
:func:`save_or_keep` writes a record it could not save into its run directory (``record.json``) and
:func:`import_runs` (``edgerun runs import RUN_DIR``) brings it in later.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from edgerun.core.errors import EdgerunError, StoreError, StoreLocked, UnknownRun, UsageError
from edgerun.core.paths import edgerun_home
from edgerun.devices.info import DeviceInfo
from edgerun.runtime.columns import STORED, device_label
from edgerun.runtime.record import MAX_RECORD_BYTES, RecordInvalid, RunRecord, check_record_dict, check_run_id

STORE_FILENAME = "results.sqlite"

def _migration_3(db: sqlite3.Connection) -> None:
    """3: the device as a person reads it (with the emulated CPU) and the accuracy verdict, backfilled."""
    db.execute("ALTER TABLE runs ADD COLUMN device_label TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN accuracy_ok INTEGER")
    rows = db.execute("SELECT run_id, device, record_json FROM runs").fetchall()
    for run_id, device, blob in rows:
        try:
            d = json.loads(blob)
        except ValueError:
            d = {}
        passed = (d.get("accuracy") or {}).get("passed") if isinstance(d, dict) else None
        info = d.get("device") if isinstance(d, dict) else None
        db.execute("UPDATE runs SET device_label = ?, accuracy_ok = ? WHERE run_id = ?",
                   (device_label(device, DeviceInfo.from_json(info)),
                    None if passed is None else int(bool(passed)), run_id))


Migration = Union[str, Callable[[sqlite3.Connection], None]]

# Each step takes the store from version i to i+1: SQL statements, or a function of the connection
# (run inside the same transaction). Never edit a released step; append a new one.
MIGRATIONS: tuple[Migration, ...] = (
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
    _migration_3,
    # 4: LLM runs say which test they are (pp64, tg32, generate, score); earlier runs have none.
    "ALTER TABLE runs ADD COLUMN llm_test TEXT;",
)
SCHEMA_VERSION = len(MIGRATIONS)

DEFAULT_TIMEOUT_S = 10.0  # how long an operation waits for another process's lock (a sweep and `runs list`)
RECORD_FILENAME = "record.json"  # in a run directory: the record kept when the store could not take it

#: The indexed columns of ``runs`` besides ``record_json``, from the registry (SQL name -> column).
RUN_COLUMNS = {c.sql: c for c in STORED}


def default_store_path() -> Path:
    return edgerun_home() / STORE_FILENAME


def default_timeout() -> float:
    """``$EDGERUN_STORE_TIMEOUT`` (seconds) if set, else :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ.get("EDGERUN_STORE_TIMEOUT")
    if not env:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(env)
    except ValueError:
        raise UsageError(f"EDGERUN_STORE_TIMEOUT={env!r} is not a number of seconds.") from None
    if not value >= 0:
        raise UsageError(f"EDGERUN_STORE_TIMEOUT={env!r} must be >= 0 seconds.")
    return value


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_MOVE_AWAY = "Use --store to point at another file, or move this one away."


def _failure_kind(exc: sqlite3.Error) -> str | None:
    """locked | damaged | readonly | full | io, or None for an error of the statement itself."""
    low = str(exc).lower()
    code = getattr(exc, "sqlite_errorname", "") or ""
    if "locked" in low or "busy" in low or code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "locked"
    if any(w in low for w in ("malformed", "not a database", "corrupt", "file is encrypted")) or \
            code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "damaged"
    if "readonly" in low or "read-only" in low or code.startswith("SQLITE_READONLY"):
        return "readonly"
    if "database or disk is full" in low or code.startswith("SQLITE_FULL"):
        return "full"
    if "unable to open" in low or "disk i/o" in low or code.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR")):
        return "io"
    return None


def translate(exc: sqlite3.Error, path: Path, action: str, timeout: float) -> StoreError:
    """One clear :class:`StoreError` for a SQLite failure while ``action`` (e.g. "saving run r-1")."""
    text = str(exc)
    kind = _failure_kind(exc)
    if kind == "locked":
        return StoreLocked(
            f"{path} is locked by another process: {action} waited {timeout:g} s for it ({text}).",
            hint="Another edgerun (a sweep, a `runs` command) or a tool holding the file open (sqlite3, a "
                 "backup) has it; retry when it is done, or wait longer with EDGERUN_STORE_TIMEOUT=SECONDS.")
    if kind == "damaged":
        return StoreError(
            f"{path} is damaged or not a results store: {action} failed ({text}).",
            hint="Move it away (`sqlite3 FILE .recover` may rescue its runs) and use --store for a new one.")
    if kind == "readonly":
        return StoreError(f"{path} is read-only: {action} failed ({text}).",
                          hint="Make the file and its directory writable, or use --store to point elsewhere.")
    if kind == "full":
        return StoreError(f"the disk holding {path} is full: {action} failed ({text}).",
                          hint="Free space, or use --store to point at another disk.")
    if kind == "io":
        return StoreError(f"{path} cannot be read or written: {action} failed ({text}).",
                          hint="Check the path, its permissions and the disk. " + _MOVE_AWAY)
    return StoreError(f"{action} in {path} failed ({type(exc).__name__}: {text}).", hint=_MOVE_AWAY)


class Store:
    """``with Store() as store: run_id = store.save(record)``.

    ``timeout``: seconds any operation waits for a lock another process holds (default
    :func:`default_timeout`) before it fails with a :class:`StoreError` saying so.
    """

    def __init__(self, path: str | Path | None = None, *, target_version: int = SCHEMA_VERSION,
                 timeout: float | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self._db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"the directory of {self.path} cannot be created ({exc}).",
                             hint="Check the path and its permissions, or use --store.") from exc
        try:
            # Autocommit mode; writes go through _tx() so DDL (migrations) is transactional too.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        except sqlite3.Error as exc:
            self.close()
            raise translate(exc, self.path, "opening it", self.timeout) from exc
        try:
            self._migrate(target_version)
        except BaseException:
            self.close()
            raise

    # -- lifecycle
    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _sql(self, action: str):
        """Every sqlite3 error inside becomes one clear StoreError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise translate(exc, self.path, action, self.timeout) from exc

    @contextlib.contextmanager
    def _tx(self):
        self._db.execute("BEGIN IMMEDIATE")  # the write lock now, or a busy error after the timeout
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- schema
    def _read_version(self) -> int:
        """The stored version; 0 only for a file without the table (a new store). Raises sqlite3 errors."""
        try:
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc).lower():
                return 0
            raise
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        with self._sql("reading its schema version"):
            return self._read_version()

    def _check_not_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this edgerun understands ({SCHEMA_VERSION}).",
                hint="Upgrade edgerun, or use --store to point at another results store.")

    def _migrate(self, target: int) -> None:
        current = self.schema_version()
        self._check_not_newer(current)
        if current >= target:
            return
        with self._sql(f"taking the write lock to bring it to schema {target}"):
            self._db.execute("BEGIN IMMEDIATE")
        try:
            # Under the write lock: another process may have created or migrated the store meanwhile.
            with self._sql("reading its schema version"):
                current = self._read_version()
            self._check_not_newer(current)
            if current < target:
                try:
                    self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                    for step in MIGRATIONS[current:target]:
                        if callable(step):
                            step(self._db)
                        else:
                            for statement in filter(str.strip, step.split(";")):
                                self._db.execute(statement)
                    self._db.execute("DELETE FROM schema_version")
                    self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                except sqlite3.Error as exc:
                    if _failure_kind(exc) is not None:  # locked, damaged, full...: say that, not "migrating"
                        raise translate(exc, self.path, f"migrating it from schema {current} to {target}",
                                        self.timeout) from exc
                    raise StoreError(f"migrating {self.path} from schema {current} to {target} failed ({exc}).",
                                     hint="The file is unchanged; use --store to point at another results "
                                          "store.") from exc
            with self._sql(f"committing schema {target}"):
                self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # one transaction: all steps or none
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

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
        values = {}
        for sql, col in RUN_COLUMNS.items():
            v = col.get(record)
            values[sql] = int(v) if isinstance(v, bool) else v
        values["record_json"] = json.dumps(d, default=_json_default)
        names = list(values)
        with self._sql(f"saving run {record.run_id}"), self._tx():
            if self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (record.run_id,)).fetchone():
                raise StoreError(f"a run {record.run_id} is already in {self.path}; runs are never overwritten.",
                                 hint="Give the record a new run id (edgerun.runtime.record.new_run_id()).")
            # Column names come from the registry (fixed identifiers), values are bound.
            self._db.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             [values[n] for n in names])
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
        full = self.resolve(run_id)
        with self._sql(f"deleting run {full}"), self._tx():
            self._db.execute("DELETE FROM runs WHERE run_id = ?", (full,))

    # -- reading
    def contains(self, run_id: str) -> bool:
        """Is a run with exactly this id stored?"""
        with self._sql(f"looking up run {run_id}"):
            return self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def resolve(self, run_id: str) -> str:
        """The full id of the one run whose id starts with ``run_id``."""
        if not run_id:
            raise UnknownRun("an empty run id.", hint="List runs with `edgerun runs list`.")
        escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._sql(f"looking up run {run_id}"):
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
        with self._sql(f"reading run {full}"):
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
        """Newest first; each a dict of the indexed columns, keyed by their SQL names (``device`` is the
        name as given, ``device_label`` the device as a person reads it, with the emulated CPU)."""
        keys = list(RUN_COLUMNS)
        sql = f"SELECT {', '.join(keys)} FROM runs WHERE 1=1"  # registry identifiers, not user input
        args: list = []
        for column, value in (("model", model), ("device", device), ("sweep_id", sweep_id)):
            if value is not None:
                sql += f" AND {column} = ?"  # column names are from the fixed tuple above, values bound
                args.append(value)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._sql("listing runs"):
            rows = [dict(zip(keys, row)) for row in self._db.execute(sql, args)]
        for r in rows:
            if r.get("accuracy_ok") is not None:
                r["accuracy_ok"] = bool(r["accuracy_ok"])
        return rows

    def find_cell(self, sweep_id: str, cell: str) -> str | None:
        """The run id of a finished bench cell, so a resumed sweep can skip it."""
        with self._sql("looking up a bench cell"):
            row = self._db.execute(
                "SELECT run_id FROM runs WHERE sweep_id = ? AND cell = ? ORDER BY created_at DESC",
                (sweep_id, cell)).fetchone()
        return row[0] if row else None

    def __iter__(self) -> Iterator[dict]:
        return iter(self.list(limit=None))

    def __len__(self) -> int:
        with self._sql("counting runs"):
            return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


# ------------------------------------------------------------- keeping what could not be saved
class RecordKept(StoreError):
    """The store could not take a finished record, so it was written into the run directory instead.

    ``record_path`` is that file; ``cause`` the store's own error. Import it later with
    ``edgerun runs import RUN_DIR`` (:func:`import_runs`).
    """

    def __init__(self, message: str, *, record_path: Path, cause: StoreError, hint: str | None = None):
        super().__init__(message, stage=cause.stage, hint=hint)
        self.record_path = record_path
        self.cause = cause

    def to_json(self) -> dict:
        out = super().to_json()
        out["record_path"] = str(self.record_path)
        return out


def _dump_record(record: RunRecord) -> str:
    return json.dumps(record.to_dict(), default=_json_default, indent=1)


def save_or_keep(record: RunRecord, store_path: str | Path | None, run_dir: str | Path, *,
                 timeout: float | None = None) -> str:
    """Save ``record`` in the store at ``store_path`` (None: the default store) and return its run id.

    If the store fails (locked, damaged, a newer schema, read-only, ...), the whole record --
    every sample, the operator rows -- is written to ``run_dir/record.json`` and :class:`RecordKept`
    (a :class:`StoreError`, exit 7) is raised naming that file and the ``edgerun runs import``
    command that brings it in. Nothing measured is lost.
    """
    try:
        with Store(store_path, timeout=timeout) as store:
            return store.save(record)
    except StoreError as exc:
        run_dir = Path(run_dir)
        kept = run_dir / RECORD_FILENAME
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_name(kept.name + ".part")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # a planted symlink is removed, never written through
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(_dump_record(record))
            os.replace(tmp, kept)  # rename replaces a symlink at record.json itself, not its target
        except OSError as os_exc:
            raise StoreError(f"{exc.message} The record of run {record.run_id} could not be kept in {kept} "
                             f"either ({os_exc}): it is lost.", stage=exc.stage, hint=exc.hint) from exc
        raise RecordKept(
            f"{exc.message} The record of run {record.run_id} is kept in {kept}.", record_path=kept, cause=exc,
            hint=(exc.hint + " " if exc.hint else "") + f"Then store it with `edgerun runs import {run_dir}`."
        ) from exc


def _read_kept(run_dir: Path) -> dict:
    path = run_dir / RECORD_FILENAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {RECORD_FILENAME} to import.",
                         hint="Pass run directories whose record could not be stored (the error named them).")
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise RecordInvalid(f"{path} is {size:,} bytes; a run record is at most {MAX_RECORD_BYTES:,}.",
                                hint="This is not a record edgerun wrote; nothing was imported.")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{path} is not a readable record ({exc}).") from exc
    if not isinstance(d, dict) or not d.get("run_id"):
        raise UsageError(f"{path} is not a run record (no run_id).")
    check_run_id(d["run_id"], str(path))
    return d


def import_runs(store: Store, run_dirs: Iterable[str | Path]) -> list[dict]:
    """Store the records kept in run directories (``record.json``); a run id already stored is skipped.

    Every directory is read and its record validated like runner output (types, ranges, finite numbers,
    source labels, plain text: :func:`~edgerun.runtime.record.check_record_dict`) before anything is
    saved, so a bad one imports nothing. Returns one
    ``{"run_dir", "run_id", "status": "imported" | "skipped", "reason"}`` per directory.
    """
    dirs = [Path(p) for p in run_dirs]
    if not dirs:
        raise UsageError("no run directory given.", hint="edgerun runs import RUN_DIR [RUN_DIR...]")
    loaded: list[tuple[Path, dict]] = []
    for run_dir in dirs:
        loaded.append((run_dir, _read_kept(run_dir)))
    records: list[tuple[Path, str, RunRecord | None]] = []
    for run_dir, d in loaded:
        if "samples" not in d or "latency" not in d:  # a pointer written after a successful save
            records.append((run_dir, d["run_id"], None))
            continue
        where = str(run_dir / RECORD_FILENAME if run_dir.is_dir() else run_dir)
        check_record_dict(d, where)  # validated like runner output, before anything is stored
        try:
            records.append((run_dir, d["run_id"], RunRecord.from_dict(d)))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{run_dir / RECORD_FILENAME} is not a complete run record "
                             f"({type(exc).__name__}: {exc}).") from exc
    results = []
    for run_dir, run_id, record in records:
        if store.contains(run_id):
            results.append({"run_dir": str(run_dir), "run_id": run_id, "status": "skipped",
                            "reason": f"already in {store.path}"})
        elif record is None:
            raise StoreError(f"{run_dir / RECORD_FILENAME} names run {run_id} but holds no record, and "
                             f"{store.path} does not have it.",
                             hint="Was it saved into another store? Pass that one with --store.")
        else:
            store.save(record)
            results.append({"run_dir": str(run_dir), "run_id": run_id, "status": "imported", "reason": None})
    return results


def open_store(path: str | Path | None = None) -> Store:
    return Store(path)


__all__ = ["Store", "StoreError", "UnknownRun", "RecordKept", "SCHEMA_VERSION", "MIGRATIONS", "RECORD_FILENAME",
           "default_store_path", "open_store", "save_or_keep", "import_runs", "translate"]
