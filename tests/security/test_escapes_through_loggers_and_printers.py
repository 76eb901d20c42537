"""Issue 20 item 1: device text reached the terminal raw through log warnings.

A runner's error with OSC/CSI escapes (window title, clear screen, OSC 8 links) was sanitised where a
caller remembered :func:`~edgerun.core.text.sanitize_text`, and not where it did not: ``profile``'s and
``bench-llm``'s ``WARNING`` lines (also with ``--json``, on stderr). The sanitiser is now enforced at the
exits -- the ``edgerun`` logging handler's formatter and every console of the CLI -- and it also
removes bidirectional overrides. These tests go through every logger of every room (found in the
source, so a new module's logger is covered), every console object of every CLI module, and the real
``profile`` command with a device whose runner dies printing hostile bytes, with and without ``--json``.

The hostile device is ``edgerun.devices.fake`` (in memory, so the CLI runs in-process): no real device
can be made to print chosen bytes on demand; the bundle, artifact, deploy, parser and printers are real.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import pkgutil
import re
from pathlib import Path

import pytest
from rich.table import Table
from typer.testing import CliRunner

import edgerun.cli
from edgerun.cli import _common, app
from edgerun.core.text import sanitize_text
from edgerun.devices.fake import fake_board, reset_fake_boards

ROOT = Path(__file__).resolve().parents[2]
# window title, clear screen, an OSC 8 link, a right-to-left override and an isolate, 8-bit CSI,
# a carriage return that would overwrite the line, DEL, NUL
HOSTILE = ("\x1b]0;owned\x07\x1b[2J\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \u202etxt.exe\u2066 "
           "\x9b31m\rfake ok\x7f\x00")
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def assert_clean(text: str) -> None:
    bad = FORBIDDEN.findall(text)
    assert not bad, f"control characters reached the output: {bad!r} in {text!r}"


def _logger_names() -> list[str]:
    names = set()
    for room in ("core", "export", "runtime", "devices", "edgerun"):
        for py in (ROOT / room).rglob("*.py"):
            names.update(re.findall(r"""getLogger\(\s*["']([\w.]+)["']\s*\)""", py.read_text()))
    return sorted(names)


LOGGERS = _logger_names()


def test_every_room_has_a_logger_found():
    assert {"edgerun.devices", "edgerun.profile", "edgerun.llm", "edgerun.analysis", "edgerun.export"} <= set(LOGGERS)


@pytest.fixture
def cli_log(monkeypatch, capsys):
    """The CLI's logging set up as a command sets it up (its handler writes to the current stderr)."""
    log = logging.getLogger("edgerun")
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "level", log.level)
    _common._setup_logging(debug=False)
    return lambda: capsys.readouterr().err


@pytest.mark.parametrize("name", LOGGERS)
def test_escapes_logged_by_any_room_never_reach_the_terminal(cli_log, name):
    """Stops: ``log.warning("%s", exc.paragraph())`` printing a device's escapes (every logger, as an
    argument, in the message itself and in an exception's traceback text)."""
    log = logging.getLogger(name)
    log.warning("device said: %s\n\tnext line", HOSTILE)
    log.error(f"inline {HOSTILE}")
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        log.exception("failed")
    out = cli_log()
    assert_clean(out)
    assert out.count("link") >= 3 and "txt.exe" in out and "fake ok" in out   # the text itself is kept
    assert "device said: " in out and "\n\tnext line" in out                    # and legitimate newline + tab
    assert f"WARNING {name}: " in out


def _cli_consoles():
    found = []
    for mod in pkgutil.iter_modules(edgerun.cli.__path__):
        module = importlib.import_module(f"edgerun.cli.{mod.name}")
        for attr, value in vars(module).items():
            if type(value).__module__.startswith("rich") or isinstance(value, _common.SafeConsole):
                if hasattr(value, "print") and hasattr(value, "render_str"):
                    found.append(pytest.param(value, id=f"{mod.name}.{attr}"))
    return found


CONSOLES = _cli_consoles()


def test_the_cli_modules_print_through_consoles():
    assert len(CONSOLES) >= 7  # err_console and the `out` of each command module


@pytest.mark.parametrize("console", CONSOLES)
def test_every_cli_console_sanitises_what_it_prints(console):
    """Stops: a printer that forgot :func:`plain` (a table cell, a status line, a warning) passing a
    record's or a device's escapes to the terminal."""
    t = Table("name", "value")
    t.add_row(HOSTILE, f"[bold]{HOSTILE}[/]")
    with console.capture() as cap:
        console.print(HOSTILE, markup=False, highlight=False)
        console.print(f"[yellow]warning:[/] {HOSTILE}", highlight=False)
        console.print(t)
        console.out(HOSTILE)
    out = cap.get()
    assert_clean(out.replace("\x1b[", "") if console.is_terminal else out)
    assert "fake ok" in out and "txt.exe" in out


def test_sanitize_text_removes_bidi_overrides_and_keeps_text():
    assert sanitize_text("a\u202eb\u2066c\u2069d\u200fe") == "abcde"
    assert sanitize_text(sanitize_text(HOSTILE)) == sanitize_text(HOSTILE)
    assert_clean(sanitize_text(HOSTILE))


@pytest.fixture
def hostile_board():
    reset_fake_boards()
    board = fake_board("hostile")
    board.info = dataclasses.replace(board.info, arch="x86_64", cpu_model=f"Cortex {HOSTILE}")  # host bundle
    board.default = lambda argv: (1, b"", HOSTILE.encode() + b"\nerror: " + HOSTILE.encode() + b"\n")
    yield board
    reset_fake_boards()


@pytest.mark.parametrize("json_out", [False, True], ids=["human", "json"])
def test_profile_on_a_device_whose_runner_prints_escapes(make_artifact, runner_bundle, hostile_board, json_out,
                                                        monkeypatch):
    """Stops: ``profile``'s WARNING line (and its failure line) carrying the runner's escapes, with and
    without ``--json`` (logs go to stderr then, the JSON to stdout)."""
    monkeypatch.setattr(logging.getLogger("edgerun"), "handlers", [])  # as in a fresh process
    runner_bundle("host")
    artifact = make_artifact("digits_cnn", "host", "fp32")
    args = ["profile", str(artifact), "--device", "fake://hostile", "--iterations", "2", "--warmup", "0"]
    result = CliRunner().invoke(app, args + (["--json"] if json_out else []))
    out = result.output
    assert result.exit_code not in (0, 70), out
    assert "WARNING edgerun.profile" in out and "fake ok" in out
    assert_clean(out.replace("\n", "").replace("\t", "") if not json_out else out)
    if json_out:  # every string of the JSON object, as `jq -r` would print it, is plain text too
        doc = json.loads(result.stdout.strip().splitlines()[-1])

        def strings(v):
            if isinstance(v, str):
                yield v
            elif isinstance(v, dict):
                for k, x in v.items():
                    yield k
                    yield from strings(x)
            elif isinstance(v, list):
                for x in v:
                    yield from strings(x)

        text = "\n".join(strings(doc))
        assert "fake ok" in text
        assert_clean(text.replace("\n", "").replace("\t", ""))
