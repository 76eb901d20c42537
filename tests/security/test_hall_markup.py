"""Issue 9 item 6: text that is not edgerun's is never rich markup, nor terminal escapes.

A ``[/]`` in a path crashed the CLI with a MarkupError traceback, ``[bold]`` in a device's stderr
silently altered what was printed, and an inventory entry's name in ``[...]`` vanished from its
error. Every message the CLI prints through rich is now sanitised and markup-escaped.

The hostile device is ``edgerun.devices.fake`` (in memory, so the CLI runs in-process with typer's
CliRunner): no real device can be made to print chosen bytes on demand; everything else is real
(the host bundle, the artifact, deploy, the protocol parser, the CLI's printers).
"""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from edgerun.cli import app
from edgerun.devices.fake import fake_board, reset_fake_boards

HOSTILE = b"[bold]boom[/] [/] [link=http://evil]x[/link] \x1b]0;pwned\x07\x1b[2J tail\n"


@pytest.fixture(autouse=True)
def _boards():
    reset_fake_boards()
    yield
    reset_fake_boards()


def test_a_path_with_closing_markup_is_printed_not_a_traceback(cli, tmp_path):
    (tmp_path / "x[").mkdir()
    (tmp_path / "x[" / "]y").mkdir()  # the directory x[/]y
    r = cli("inspect", "x[/]y", cwd=tmp_path)
    assert r.returncode == 9, r.stderr
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    assert "x[/]y" in r.stderr


def test_device_stderr_markup_and_escapes_are_printed_as_text(make_artifact, runner_bundle, tmp_path):
    runner_bundle("host")
    artifact = make_artifact("digits_cnn", "host", "fp32")
    board = fake_board("hostile")
    board.info = dataclasses.replace(board.info, arch="x86_64")  # so the host bundle is deployed
    board.default = lambda argv: (1, b"", HOSTILE)  # the "runner" dies printing hostile bytes
    result = CliRunner().invoke(app, ["run", str(artifact), "--device", "fake://hostile"])
    out = result.output
    assert result.exit_code == 15, out
    assert "[bold]boom[/] [/]" in out and "[link=http://evil]x[/link]" in out  # printed as it is
    assert "\x1b" not in out and "\x07" not in out and "pwned" not in out.replace("0;pwned", "")  # no escapes


def test_an_inventory_error_keeps_the_entry_name(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices."pi[bold]5"]\nuri = "nope://x"\n')
    result = CliRunner().invoke(app, ["devices", "list", "--inventory", str(inv)])
    assert result.exit_code == 2, result.output
    assert "pi[bold]5" in result.output.replace("\n", "")
