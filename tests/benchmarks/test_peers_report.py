"""benchmarks/peers without its heavy parts: statistics, the goal verdict, the table, the worker protocol,
the venv's identity, and a model's work directory (a tiny user model).

The full smoke run (its venv, conversions and every runtime) takes minutes, so it is a step of
``.ci/run`` instead of a test here; these checks take a few seconds.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
NAMES = ("common", "report", "peer_venv", "models", "run")


@pytest.fixture(scope="module")
def peers():
    """The benchmark's modules, imported by their plain names from their folder, and forgotten after."""
    sys.path.insert(0, str(PEERS))
    try:
        mods = {n: importlib.import_module(n) for n in NAMES}
        yield type("Peers", (), mods)
    finally:
        sys.path.remove(str(PEERS))
        for n in NAMES:
            sys.modules.pop(n, None)


def _run(runtime, median_ms, *, round_=0, threads=1, scheme="fp32", ok=True, **extra):
    samples = [int(median_ms * 1e6)] * 3
    r = {"runtime": runtime, "model": "m", "scheme": scheme, "threads": threads, "round": round_, "ok": ok,
         "size_bytes": 100, "peak_rss_bytes": 2**20, "snr_db": 50.0, **extra}
    if ok:
        r["samples_ns"] = samples
        r["summary"] = {"n": 3, "median_ms": median_ms}
    return r


def test_best_peer_ratio_and_goal(peers):
    runs = [_run("edgerun", 1.0), _run("edgerun", 1.0, round_=1), _run("onnxruntime", 2.0), _run("litert", 1.25),
            _run("eager", 0.5)]
    cells = peers.report.cells_from_runs(runs, {})
    by = {c["runtime"]: c for c in cells}
    assert [c["runtime"] for c in cells] == ["edgerun", "onnxruntime", "litert", "eager"]
    assert by["edgerun"]["n"] == 6 and by["edgerun"]["rounds_ok"] == 2
    # eager is faster than everything, but it is not a peer: the best peer is LiteRT
    assert by["edgerun"]["best_peer"] == "litert"
    assert by["edgerun"]["ratio_to_best_peer"] == pytest.approx(0.8)
    assert by["eager"]["ratio_to_best_peer"] == pytest.approx(0.4)
    (goal,) = peers.report.goal_lines(cells)
    assert goal["met"] is True and goal["ratio"] == pytest.approx(0.8) and goal["goal"] == 0.9


def test_goal_not_met_and_failures_are_shown(peers):
    runs = [_run("edgerun", 1.0), _run("onnxruntime", 1.0),
            _run("litert", 0, ok=False, error="conversion: RuntimeError: boom"),
            _run("torch.compile", 0, ok=False, skipped="torch.compile failed: no compiler")]
    result = {"cells": peers.report.cells_from_runs(runs, {}), "failures": []}
    result["goal"] = peers.report.goal_lines(result["cells"])
    assert result["goal"][0]["met"] is False and result["goal"][0]["best_peer"] == "onnxruntime"
    table = peers.report.markdown(result)
    assert "| m | fp32 | edgerun runner | 1.000 |" in table
    assert "ONNX Runtime (best peer)" in table
    assert "failed: conversion: RuntimeError: boom" in table
    assert "skipped: torch.compile failed: no compiler" in table
    assert "= 1.00 (goal ≤ 0.9)  **✗ goal not met**" in table


def test_no_peer_means_no_ratio(peers):
    cells = peers.report.cells_from_runs([_run("edgerun", 1.0)], {})
    (goal,) = peers.report.goal_lines(cells)
    assert goal["ratio"] is None and goal["met"] is None
    assert "no peer measured" in peers.report.markdown({"cells": cells, "goal": [goal]})


def test_steal_and_busy_fractions(peers):
    before = [100, 0, 100, 700, 0, 0, 0, 0]
    after = [200, 0, 150, 900, 0, 0, 0, 50]   # 400 ticks: 150 busy, 200 idle, 50 stolen
    got = peers.report.steal_between(before, after)
    assert got["steal_fraction"] == pytest.approx(50 / 400)
    assert got["busy_fraction"] == pytest.approx(1 - 200 / 400)
    assert peers.report.steal_between(None, after)["steal_fraction"] is None


def test_smoke_and_default_arguments(peers):
    smoke = peers.run.parse_args(["--smoke"])
    assert (smoke.models, smoke.schemes, smoke.threads, smoke.rounds, smoke.iterations) == \
        (["text_encoder"], ["fp32", "int8-dynamic"], [1], 2, 3)
    full = peers.run.parse_args(["--models", "a,b:c", "--threads", "1,2", "--repeats", "2"])
    assert full.models == ["a", "b:c"] and full.threads == [1, 2] and full.repeats == 2 and full.rounds == 10
    with pytest.raises(SystemExit):
        peers.run.parse_args(["--schemes", "int4"])


def test_a_dead_worker_is_an_error_not_a_crash(peers):
    res = peers.run.run_worker(sys.executable, ["no-such-job"], timeout=60)
    assert res["ok"] is False and "exited 2" in res["error"] and res["worker_peak_rss_bytes"] > 0


def test_venv_identity_follows_the_pins(peers, monkeypatch):
    h = peers.peer_venv.pins_hash()
    assert h == peers.peer_venv.pins_hash()
    monkeypatch.setattr(peers.peer_venv, "PINS", (*peers.peer_venv.PINS, "extra==1"))
    assert peers.peer_venv.pins_hash() != h
    assert any(p for p in peers.peer_venv.base_site_packages() if Path(p).is_dir())


def test_work_directory_of_a_user_model(peers, tmp_path, monkeypatch):
    """prepare(): weights, example, 16 calibration samples edgerun's export accepts, reference, factory."""
    import torch

    (tmp_path / "tinymodels.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    torch.manual_seed(3)\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())\n"
        "    return m.eval(), (torch.randn(1, 8),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = peers.models.prepare("tinymodels:tiny", tmp_path / "root")
    work = Path(meta["workdir"])
    assert work.name.startswith("tinymodels_tiny-") and meta["calibration"]["samples"] == 16
    again = peers.models.prepare("tinymodels:tiny", tmp_path / "root")
    assert again["reused"] and again["workdir"] == meta["workdir"]
    with np.load(work / "calibration.npz") as z:
        assert z["input_0"].shape == (16, 1, 8)
    from edgerun.export.pipeline import load_calibration_file

    samples = load_calibration_file(str(work / "calibration.npz"), (torch.zeros(1, 8),))
    assert len(samples) == 16 and torch.equal(samples[0][0], torch.from_numpy(np.load(work / "example" / "input_0.npy")))
    # the factory rebuilds the model with the saved weights, hash-checked
    monkeypatch.syspath_prepend(str(work))
    model, example = importlib.import_module("edgerun_peers_model").build()
    sys.modules.pop("edgerun_peers_model", None)
    ref = np.load(work / "reference.npz")["output_0"]
    with torch.no_grad():
        assert np.allclose(model(*example).numpy(), ref)
    assert json.loads((work / "meta.json").read_text())["weights_sha256"] == meta["weights_sha256"]
    # a changed weights file is refused
    sd = torch.load(work / "weights.pt")
    sd["0.bias"] += 1
    torch.save(sd, work / "weights.pt")
    with pytest.raises(RuntimeError, match="weights hash"):
        peers.common.load_model(work)
