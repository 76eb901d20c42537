"""Issue 9 item 4: terminal escape sequences from a device reached the user's terminal.

A device (or whoever controls it) chooses the text of its error lines and probe answers: an OSC
sequence retitles the window or plants a hyperlink, CSI sequences hide or rewrite what was
printed, ``\\r`` overwrites a line. edgerun now passes every piece of device text through
:func:`edgerun.core.text.sanitize_text` before it goes into an error message or a printed field;
the raw bytes stay in the error's ``result`` (and in the run directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgerun.core.text import sanitize_text
from edgerun.devices import DeviceError, resolve_device
from edgerun.devices.probe import parse_probe

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[8mhidden\x1b[0m\rfake ok\x9b31m\x1bc"
FAKE_ADB = Path(__file__).resolve().parents[1] / "devices" / "fake_adb"


def test_sanitize_text_keeps_newlines_and_tabs_and_nothing_that_drives_a_terminal():
    clean = sanitize_text(HOSTILE + "\n\tnext\x00")
    assert clean == "hiddenfake ok\n\tnext"
    assert sanitize_text(HOSTILE.encode()) == sanitize_text(HOSTILE)
    assert sanitize_text(clean) == clean
    assert not any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f for c in sanitize_text(HOSTILE))


def test_probe_answers_are_sanitised_before_anyone_prints_them():
    """Stops: a board whose /etc/os-release or cpuinfo carries escapes rewriting `devices probe` output."""
    raw = (f"@@section arch\naarch64\n@@section os_release\nPRETTY_NAME=\"Debian{HOSTILE}\"\n"
           f"@@section cpuinfo\nmodel name\t: Cortex{HOSTILE}\n@@section kernel\n6.6{HOSTILE}\n")
    info = parse_probe(raw, transport="ssh")
    for value in (info.os, info.cpu_model, info.kernel):
        assert "\x1b" not in value and "\r" not in value and "\x9b" not in value
    assert info.cpu_model.startswith("Cortex") and "fake ok" in info.cpu_model


def test_a_device_error_line_with_escapes_is_sanitised_and_the_raw_bytes_kept(monkeypatch, tmp_path):
    """Stops: an error message quoting the device's stderr from driving the terminal.

    Through the stand-in adb client (tests/devices/fake_adb; no Android device can run here),
    which, like the real one, echoes the remote path in its error line.
    """
    monkeypatch.setenv("PATH", f"{FAKE_ADB}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R58M1:device")
    with resolve_device(f"adb://R58M1?work_dir={tmp_path}/sandbox") as dev:
        with pytest.raises(DeviceError) as ei:
            dev.pull(f"{tmp_path}/sandbox/nope{HOSTILE}", tmp_path / "x")
    err = ei.value
    for text in (err.message, err.paragraph()):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "No such file or directory" in err.message
    assert b"\x1b]0;owned\x07" in err.result.stderr  # the raw bytes stay with the error
