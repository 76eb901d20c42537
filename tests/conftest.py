"""Suite-wide fixtures. Each test run gets its own EDGERUN_HOME so nothing leaks between runs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _edgerun_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "edgerun-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("EDGERUN_HOME", str(home))
    return home
