"""``edgerun bench --executor ray`` (issue 25 item 4): the exports of a sweep as Ray tasks on a local Ray
instance started for the run (``ray?num_cpus=2``, no dashboard, shut down after it), measured here.

One two-cell sweep (``factories:tiny``, fp32 and int8, on ``local://``) runs twice: with the local pool (in
this process: the ``bench`` the CLI calls) and with Ray through the real CLI, each with an ``EDGERUN_HOME`` of
its own (sharing the session's runner bundle cache), so Ray exports everything again. Both must give the
same sweep, the same cells, the same recipe hashes and the same programs (sha256 of each ``.pte``: these
exports are deterministic), with the exports done in Ray workers (other processes) and the cells measured
and stored by the edgerun process. The rest is in-process
and cheap: the executor forms, Ray missing, a worker that does not see the driver's EDGERUN_HOME, and an
artifact whose recipe hash is not the driver's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import EdgerunError, EnvironmentProblem, ExitCode, ExportError, UsageError
from edgerun.store import Store

pytest.importorskip("ray", reason="Ray is the optional extra edgerun[ray] (scripts/setup installs it)")

FACTORIES = Path(__file__).resolve().parents[1] / "export"
MODEL, TARGETS, SCHEMES = "factories:tiny", ["host"], ["fp32", "int8"]


@dataclasses.dataclass
class Sweep:
    result: dict
    records: dict          # cell key -> record
    home: Path
    pid: int               # the process that drove the sweep
    stderr: str = ""


def _home(root: Path, shared_cache: Path) -> Path:
    """An EDGERUN_HOME of its own (so every export runs again) whose cache is the session's (its runner bundle)."""
    home = root / "home"
    home.mkdir(parents=True)
    (home / "cache").symlink_to(shared_cache, target_is_directory=True)
    return home


def _records(store: Path, result: dict) -> dict:
    with Store(store) as s:
        return {rec.cell: rec for rec in (s.get(r) for r in result["run_ids"])}


def _local_pool(root: Path, shared_cache: Path, device: str) -> Sweep:
    """The local pool, in this process: the ``bench`` the CLI calls, with the values the CLI gives it."""
    from edgerun.devices import parse_device_list
    from edgerun.profiling import ProfileSettings, bench

    home, store = _home(root, shared_cache), root / "s.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", str(home))
        mp.syspath_prepend(str(FACTORIES))
        devices = [spec.ref for spec in parse_device_list(device)]
        with Store(store) as s:
            result = bench(MODEL, TARGETS, SCHEMES, devices, ProfileSettings(warmup=0, iterations=3, threads=(1,)),
                           store=s)
    return Sweep(result, _records(store, result), home, os.getpid())


def _ray_cli(root: Path, shared_cache: Path, device: str) -> Sweep:
    """``edgerun bench --executor ray?num_cpus=2`` through the installed entry point."""
    home, store = _home(root, shared_cache), root / "s.sqlite"
    exe = Path(sys.executable).with_name("edgerun")
    env = {**os.environ, "EDGERUN_HOME": str(home), "PYTHONPATH": str(FACTORIES), "COLUMNS": "200"}
    cmd = [str(exe), "bench", MODEL, "--targets", ",".join(TARGETS), "--schemes", ",".join(SCHEMES),
           "--devices", device, "--warmup", "0", "--iterations", "3", "--threads", "1", "--store", str(store),
           "-o", str(root / "bench.html"), "--executor", "ray?num_cpus=2", "--json"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root) as p:
        out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    result = json.loads(out)
    return Sweep(result, _records(store, result), home, p.pid, err)


@pytest.fixture(scope="module")
def sweeps(runner_bundle, edgerun_home, tmp_path_factory):
    runner_bundle("host")
    cache = edgerun_home / "cache"
    tmp = tmp_path_factory.mktemp("ray-executor")
    device = f"local://?work_dir={tmp / 'dev'}"   # one device for both (a sweep's id names its devices)
    return _local_pool(tmp / "local", cache, device), _ray_cli(tmp / "ray", cache, device)


@pytest.mark.slow  # two sweeps, one starting Ray and two workers that import torch/executorch
def test_ray_gives_the_local_pools_sweep(sweeps):
    local, ray = sweeps
    assert local.result["executor"] == {"name": "local"}
    assert ray.result["executor"] == {"name": "ray", "address": "local", "num_cpus": 2}
    for s in sweeps:
        assert not s.result["failures"] and s.result["cells"] == 2 and len(s.result["run_ids"]) == 2
    # the same sweep: its id does not depend on where the exports ran, so either resumes the other
    assert ray.result["sweep_id"] == local.result["sweep_id"]
    assert sorted(ray.records) == sorted(local.records) and len(local.records) == 2
    for cell, rec in ray.records.items():
        other = local.records[cell]
        assert rec.sweep_id == other.sweep_id == local.result["sweep_id"]
        assert (rec.model.name, rec.model.target, rec.model.scheme, rec.model.recipe_hash) == \
               (other.model.name, other.model.target, other.model.scheme, other.model.recipe_hash)
        assert rec.memory.pte_bytes == other.memory.pte_bytes
        # the artifact each record names is its own home's, and holds the same program
        assert Path(rec.model.artifact).parent == ray.home / "artifacts"
        assert Path(other.model.artifact).parent == local.home / "artifacts"
        a, b = read_manifest(rec.model.artifact), read_manifest(other.model.artifact)
        assert a.recipe_hash == b.recipe_hash == rec.model.recipe_hash
        assert a.pte_sha256 == b.pte_sha256 and a.ok and b.ok


@pytest.mark.slow  # two sweeps, one starting Ray and two workers that import torch/executorch
def test_the_exports_ran_in_ray_workers_and_the_driver_measured(sweeps):
    local, ray = sweeps
    assert [e["recipe"] for e in ray.result["exports"]] == ["fp32", "int8"]
    for e in ray.result["exports"]:
        assert e["executor"] == "ray" and e["pid"] != ray.pid and "error" not in e
        assert read_manifest(e["path"]).recipe_hash == e["recipe_hash"]
    assert all(e["executor"] == "local" and e["pid"] == local.pid for e in local.result["exports"])
    # the measurements ran in the driver, on its local:// device, as with the local pool
    assert all(r.device_name == l.device_name for r, l in zip(ray.records.values(), local.records.values()))
    # progress said where the exports were while they ran; the token file and no half-made export is left
    assert "starting a local Ray instance (2 CPUs) for 2 export(s)" in ray.stderr
    assert "export host/fp32 [" in ray.stderr and "export host/int8 [" in ray.stderr
    left = sorted(p.name for p in (ray.home / "artifacts").iterdir())
    assert left == sorted(Path(e["path"]).name for e in ray.result["exports"])


# ------------------------------------------------------------------------------- cheap, in-process

def test_executor_forms():
    from edgerun.executors import LocalExecutor, RayExecutor, parse_executor

    assert isinstance(parse_executor(None), LocalExecutor) and isinstance(parse_executor("local"), LocalExecutor)
    ray = parse_executor("ray")
    assert isinstance(ray, RayExecutor) and ray.address is None and ray.num_cpus is None
    assert parse_executor("ray?num_cpus=3").num_cpus == 3
    assert parse_executor("ray://head.lab:10001").address == "ray://head.lab:10001"
    for bad in ("dask", "ray?num_cpus=0", "ray?num_cpus=two", "ray?gpus=1", "ray://", "rayy"):
        with pytest.raises(UsageError) as e:
            parse_executor(bad)
        assert e.value.exit_code == ExitCode.USAGE and bad in e.value.message


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    from edgerun.executors import parse_executor

    monkeypatch.setitem(sys.modules, "ray", None)   # what an environment without the extra imports
    with pytest.raises(EnvironmentProblem) as e:
        parse_executor("ray")
    assert e.value.exit_code == ExitCode.ENVIRONMENT
    assert "pip install 'edgerun[ray]'" in e.value.hint and "--executor local" in e.value.hint


def test_a_worker_that_does_not_see_the_drivers_home_refuses_to_export(tmp_path):
    """The task's own check, run here as a worker on another file system would run it: the driver's token
    file is not where it should be, so it exports nothing and says why."""
    from edgerun.executors import _export_task

    out = tmp_path / "art"
    res = _export_task({"model": "factories:tiny", "target": "host", "recipe": "fp32", "path": str(out),
                        "recipe_hash": "x"}, str(tmp_path / "home"), str(tmp_path / "home" / "probe"), "token")
    assert res["ok"] is False and isinstance(res["error"], EnvironmentProblem)
    assert str(tmp_path / "home") in res["error"].message and "not implemented" in res["error"].message
    assert not out.exists()
    (tmp_path / "probe").write_text("another run's token")
    res = _export_task({"model": "m", "target": "t", "recipe": "r", "path": str(out), "recipe_hash": "x"},
                       str(tmp_path), str(tmp_path / "probe"), "token")
    assert isinstance(res["error"], EnvironmentProblem) and not out.exists()


@pytest.mark.slow  # two sweeps, one starting Ray and two workers that import torch/executorch
def test_an_artifact_of_another_recipe_fails_its_job_and_leaves_the_cache(sweeps, tmp_path):
    """A worker with other versions (or another copy of the factory) exports another recipe: the driver
    refuses it under its own key and removes it, so a later run does not reuse it."""
    import shutil

    from edgerun.executors import ExportJob, check_exported

    _, ray = sweeps
    e = ray.result["exports"][0]
    copy = tmp_path / "artifacts" / Path(e["path"]).name
    shutil.copytree(e["path"], copy)
    good = ExportJob(model="factories:tiny", target="host", recipe=e["recipe"], path=copy, recipe_hash=e["recipe_hash"])
    assert check_exported(good) == copy
    with pytest.raises(ExportError) as err:
        check_exported(dataclasses.replace(good, recipe_hash="f" * 16))
    assert e["recipe_hash"][:12] in err.value.message and "ffffffffffff" in err.value.message
    assert isinstance(err.value, EdgerunError) and not copy.exists()
