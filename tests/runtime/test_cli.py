"""``edgerun runtime build|info`` and ``edgerun run`` through the installed console script."""

from __future__ import annotations

import json
from pathlib import Path

from rt_helpers import vector_inputs


def _json(proc) -> dict:
    assert proc.stdout.count("\n") == 1, proc.stdout  # exactly one JSON object on stdout
    return json.loads(proc.stdout)


def test_build_json_names_the_cached_bundle(cli, host_bundle, edgerun_home):
    proc = cli("runtime", "build", "--arch", "host", "--json", env={"EDGERUN_HOME": str(edgerun_home)})
    assert proc.returncode == 0, proc.stderr
    out = _json(proc)
    assert out["path"] == str(host_bundle.path) and out["tarball"] == str(host_bundle.tarball)
    assert out["executorch_version"] == host_bundle.executorch_version and out["ok"] is True


def test_build_refuses_an_unknown_arch(cli):
    proc = cli("runtime", "build", "--arch", "riscv64", "--json")
    assert proc.returncode == 2
    assert "arch must be host, x86_64 or aarch64" in _json(proc)["error"]["message"]


def test_info_checks_the_files(cli, aarch64_bundle, tmp_path):
    proc = cli("runtime", "info", str(aarch64_bundle.path), "--json")
    out = _json(proc)
    assert proc.returncode == 0 and out["intact"] is True and out["arch"] == "aarch64"
    assert out["start"][:4] == ["./ld-linux-aarch64.so.1", "--library-path", ".", "./edgerun-runner"]
    proc = cli("runtime", "info", str(tmp_path), "--json")
    assert proc.returncode == 5 and "has no bundle.json" in _json(proc)["error"]["message"]


def test_run_json(cli, host_bundle, artifacts, tmp_path):
    art = artifacts["int8"]
    proc = cli("run", str(art), "--bundle", str(host_bundle.path), "--iterations", "4", "--warmup", "1",
               "--threads", "1", "--etdump", "--outputs", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = _json(proc)
    r = out["runner"]
    assert out["preflight"]["ok"] and out["inputs"] == [str(p) for p in vector_inputs(art)]
    assert r["ok"] and len(r["execute_ns"]) == 4 and len(r["warmup_execute_ns"]) == 1
    assert r["header"]["threads"] == 1
    assert r["summary"]["etdump"]["path"] == str(tmp_path / "run.etdp") and (tmp_path / "run.etdp").stat().st_size
    assert (tmp_path / "output_0.npy").exists()


def test_run_is_refused_by_preflight(cli, slim_bundle, artifacts):
    proc = cli("run", str(artifacts["portable"]), "--bundle", str(slim_bundle.path), "--json")
    assert proc.returncode == 9
    err = _json(proc)["error"]
    assert err["type"] == "PreflightError" and "aten::convolution.out" in err["message"]
    # forced past pre-flight, the runner itself says the same thing with its own exit code
    proc = cli("run", str(artifacts["portable"]), "--bundle", str(slim_bundle.path), "--no-preflight", "--json")
    assert proc.returncode == 10 and "OperatorMissing" in _json(proc)["error"]["message"]


def test_run_human_output(cli, host_bundle, artifacts):
    proc = cli("run", str(artifacts["fp32"]), "--bundle", str(host_bundle.path), "--iterations", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "median" in proc.stdout and "executorch" in proc.stdout


def test_run_etdump_never_lands_in_the_artifact(cli, host_bundle, artifacts, edgerun_home):
    art = artifacts["fp32"]
    before = sorted(p.name for p in art.rglob("*"))
    proc = cli("run", str(art), "--bundle", str(host_bundle.path), "--etdump", "--json",
               env={"EDGERUN_HOME": str(edgerun_home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = _json(proc)["runner"]["summary"]["etdump"]["path"]
    assert path.startswith(str(edgerun_home / "runs")) and Path(path).stat().st_size > 0  # the one run-directory root
    assert sorted(p.name for p in art.rglob("*")) == before
