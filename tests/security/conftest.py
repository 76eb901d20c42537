"""Fixtures the security tests share: a real sshd on loopback (tests/devices/sshd.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sshd_module():
    name = "edgerun_tests_devices_sshd"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "devices" / "sshd.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on loopback for one test module (skips, saying why, when openssh-server is missing)."""
    mod = sshd_module()
    why = mod.missing()
    if why:
        pytest.skip(why)
    server = mod.SshServer.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
