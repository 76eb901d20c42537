"""Runtime-test fixtures: real bundles built once per session, real artifacts from the real exporter.

Every bundle is built with the real toolchain (cmake, g++, g++-aarch64-linux-gnu) against the real
executorch wheels; tests skip with the reason when a tool is missing (CI installs them all through
scripts/setup, so nothing skips there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# rt_factories (models) and rt_helpers (comparisons) import by name, also at collection time.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
QEMU = "qemu-aarch64"
# Raspberry Pi 5's core: the board CPU model, never qemu's default `max` (see test_qemu.py).
BOARD_CPU = "cortex-a76"


@pytest.fixture(scope="session", autouse=True)
def _rt_factories_on_path():
    """Make ``rt_factories:...`` importable for CLI subprocesses too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(HERE), prepend=os.pathsep)
        yield


@pytest.fixture(scope="session")
def host_bundle(runner_bundle):
    return runner_bundle("host")


@pytest.fixture(scope="session")
def slim_bundle(runner_bundle):
    return runner_bundle("host", "slim")


@pytest.fixture(scope="session")
def aarch64_bundle(runner_bundle):
    return runner_bundle("aarch64")


@pytest.fixture(scope="session")
def qemu_board(need):
    """The emulator prefix for a Raspberry Pi 5 (what the devices room's qemu device also uses)."""
    need(QEMU, "qemu-user")
    return [QEMU, "-cpu", BOARD_CPU]


@pytest.fixture(scope="session")
def artifacts(make_artifact):
    """Real artifacts of the small conv net: fp32 and int8 XNNPACK, and portable (no delegate)."""
    return {
        "fp32": make_artifact("rt_factories:small_conv", "host", "fp32"),
        "int8": make_artifact("rt_factories:small_conv", "host", "int8"),
        "portable": make_artifact("rt_factories:small_conv", "portable", "fp32"),
    }


@pytest.fixture(scope="session")
def two_input_artifact(make_artifact):
    return make_artifact("rt_factories:two_inputs", "portable", "fp32")
