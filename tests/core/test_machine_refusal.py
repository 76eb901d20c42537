"""One rule for a read-only, full or impossible ``EDGERUN_HOME`` (issue 20): every command exits 17
with a message naming the path -- also when the results store is the first thing that meets it
(`profile` exited 7 there, `finetune` 17). The store's own failures (locked, damaged, unknown run,
newer schema) stay 7.

Tests run as root, which ignores permission bits: the unwritable home is a path *under a regular
file* (ENOTDIR), and SQLite's read-only/full answers are fed to the store's own translation.
"""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest

from edgerun.core.errors import ExitCode, StoreError, machine_refusal


def _one_json(stdout: str) -> dict:
    [line] = [ln for ln in stdout.splitlines() if ln.strip()]
    return json.loads(line)


@pytest.mark.parametrize("text,code", [
    ("attempt to write a readonly database", ExitCode.ENVIRONMENT),
    ("database or disk is full", ExitCode.ENVIRONMENT),
    ("unable to open database file", ExitCode.ENVIRONMENT),
    ("database is locked", ExitCode.STORE),
    ("file is not a database", ExitCode.STORE),
    ("no such table: runs", ExitCode.STORE),
])
def test_a_store_error_is_17_exactly_when_the_file_system_refused(text, code, tmp_path):
    from edgerun.store import translate

    cause = sqlite3.OperationalError(text)
    try:
        try:
            raise cause
        except sqlite3.Error as exc:
            raise translate(exc, tmp_path / "results.sqlite", "saving run r-1", 1.0) from exc
    except StoreError as err:
        assert err.exit_code == code and err.to_json()["exit_code"] == int(code)
        assert str(tmp_path / "results.sqlite") in err.message


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EDQUOT])
def test_an_os_refusal_anywhere_in_the_chain_makes_it_17(number):
    try:
        try:
            raise OSError(number, "refused")
        except OSError as exc:
            raise StoreError("the directory of /x/results.sqlite cannot be created") from exc
    except StoreError as err:
        assert err.exit_code == ExitCode.ENVIRONMENT and machine_refusal(err).errno == number
    assert StoreError("unknown run r-1").exit_code == ExitCode.STORE  # no cause: the store's own failure
    assert StoreError.exit_code == ExitCode.STORE  # the class still declares a member of ExitCode
    err = StoreError("x")
    err.exit_code = ExitCode.STORE
    assert err.exit_code == ExitCode.STORE


def test_a_kept_record_that_could_not_be_stored_for_a_full_disk_is_17(tmp_path):
    from edgerun.store import RecordKept

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.Error as exc:
            raise StoreError("the disk holding /x is full") from exc
    except StoreError as inner:
        kept = RecordKept("kept", record_path=tmp_path / "record.json", cause=inner)
        kept.__cause__ = inner
    assert kept.exit_code == ExitCode.ENVIRONMENT


@pytest.fixture
def blocked_home(tmp_path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "home"


# Commands that write under EDGERUN_HOME and fail there before any other work.
STORE_FIRST = [
    ["profile", "no-artifact-needed", "--device", "local://"],
    ["bench", "digits_cnn", "--devices", "local://"],
    ["bench-llm", "no-artifact-needed", "--device", "local://"],
    ["finetune", "digits_cnn", "--device", "local://", "--steps", "2"],
    ["runs", "list"],
    ["runs", "import", "."],
    ["compare", "a", "b"],
    ["report", "a"],
    ["runtime", "build"],
]


@pytest.mark.parametrize("args", STORE_FIRST, ids=[" ".join(a[:2]) for a in STORE_FIRST])
def test_every_command_exits_17_naming_the_path_for_an_impossible_home(cli, blocked_home, args):
    r = cli(*args, "--json", env={"EDGERUN_HOME": str(blocked_home)})
    assert r.returncode == 17, (r.stdout, r.stderr[-2000:])
    err = _one_json(r.stdout)["error"]
    assert err["exit_code"] == 17 and (str(blocked_home) in err["message"] or "EDGERUN_HOME" in err["message"]), err


@pytest.mark.parametrize("args", [["run", "{art}", "--device", "local://"], ["deploy", "{art}", "--device", "local://"],
                                  ["profile", "{art}", "--device", "local://", "--store", "{store}"]])
def test_commands_that_read_an_artifact_first_give_the_same_code(cli, make_artifact, blocked_home, tmp_path, args):
    """`profile --store` elsewhere: the store opens, then the run directory under EDGERUN_HOME fails."""
    art = make_artifact("digits_cnn", "host", "fp32")
    argv = [a.format(art=art, store=tmp_path / "s.sqlite") for a in args]
    r = cli(*argv, "--json", env={"EDGERUN_HOME": str(blocked_home)})
    obj = _one_json(r.stdout)
    codes = {obj.get("error", {}).get("exit_code")} | {f["error"]["exit_code"] for f in obj.get("failures", [])}
    assert r.returncode == 17 and 17 in codes, (r.stdout, r.stderr[-2000:])
