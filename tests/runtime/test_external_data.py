"""A program whose constants live in an external data file (.ptd) runs with the real runner (``--ptd``), on
this machine and through a deploy to ``local://``; without its .ptd, or with a foreign one, it is refused.

The program is made here: a linear layer (XNNPACK-delegated, its weight tagged for the data file as
delegate named data) plus a non-delegated cumsum over a buffer stored as an external constant, so both of
ExecuTorch's ways of resolving external data (the program's constants and a delegate's named data) are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import ArtifactError, PreflightError
from edgerun.devices.inventory import resolve_device
from edgerun.runtime.deploy import deploy, run_on_device
from edgerun.runtime.preflight import check_compatible, preflight
from edgerun.runtime.runner import RunOptions, run_local, runner_argv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from manifests import write_artifact  # noqa: E402

IN_SHAPE, OUT_SHAPE = (2, 8), (2, 6)
TAG = "model"


def _export(out: Path) -> None:
    import torch
    from torch import nn
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    class WithExternalData(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(IN_SHAPE[1], OUT_SHAPE[1])
            self.register_buffer("offset", torch.randn(OUT_SHAPE[1]))

        def forward(self, x):
            return torch.cumsum(self.fc(x), 1) + torch.cumsum(self.offset, 0)

    torch.manual_seed(0)
    ep = torch.export.export(WithExternalData().eval(), (torch.randn(*IN_SHAPE),))
    tagged = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "p_fc_weight"]
    assert tagged, "the linear weight's placeholder was renamed: tag the new name"
    tagged[0].meta.setdefault("custom", {})["delegate_constant_tag"] = TAG
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    prog = edge.to_executorch(ExecutorchBackendConfig(
        external_constants=lambda node: TAG if node.name == "b_offset" else None))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pte").write_bytes(prog.buffer)
    prog.write_tensor_data_to_file(str(out))


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """A directory with model.pte and model.ptd (the program does not load without the .ptd)."""
    out = tmp_path_factory.mktemp("external-data")
    _export(out)
    assert (out / "model.ptd").stat().st_size > 0
    return out


def _reference(program: Path, x: np.ndarray, data: bool = True) -> np.ndarray:
    from executorch.runtime import Runtime

    kwargs = {"data_path": str(program / "model.ptd")} if data else {}
    method = Runtime.get().load_program(str(program / "model.pte"), **kwargs).load_method("forward")
    import torch

    return method.execute((torch.from_numpy(x),))[0].numpy()


@pytest.fixture(scope="module")
def artifact(program, tmp_path_factory) -> Path:
    """An edgerun artifact around the program: files.data names its .ptd, a test vector with pybindings' outputs."""
    root = tmp_path_factory.mktemp("artifact-with-data")
    pte, ptd = (program / "model.pte").read_bytes(), (program / "model.ptd").read_bytes()
    write_artifact(
        root, pte=pte,
        inputs=[{"name": "x", "shape": list(IN_SHAPE), "dtype": "float32"}],
        outputs=[{"name": "output_0", "shape": list(OUT_SHAPE), "dtype": "float32"}],
        files={"pte": "model.pte", "data": "model.ptd"},
        data_bytes=len(ptd), data_sha256=hashlib.sha256(ptd).hexdigest(),
        operators={"non_delegated": {"aten::cumsum.out": 2}, "delegated": {"XnnpackBackend": 2},
                   "delegates": ["XnnpackBackend"], "operator_table": []})
    (root / "model.ptd").write_bytes(ptd)
    x = np.random.default_rng(1).standard_normal(IN_SHAPE).astype(np.float32)
    np.save(root / "vectors/000/input_0.npy", x)
    np.save(root / "vectors/000/output_0.npy", _reference(program, x))
    assert read_manifest(root).verified_data() == root / "model.ptd"
    return root


def test_the_runner_runs_the_program_with_its_data_file_as_pybindings_does(host_bundle, program, tmp_path):
    x = np.random.default_rng(0).standard_normal(IN_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = run_local(host_bundle.path, program / "model.pte", [tmp_path / "x.npy"], warmup=0, iterations=1,
                    outputs_dir=tmp_path / "out", data=program / "model.ptd")
    assert res.load.data == str(program / "model.ptd")
    got = np.load(tmp_path / "out" / "output_0.npy")
    want = _reference(program, x)
    assert got.shape == OUT_SHAPE
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the .ptd matters: pybindings refuse the program without it, so the runner's outputs come from it
    with pytest.raises(RuntimeError):
        _reference(program, x, data=False)


def test_threads_auto_trial_loads_the_program_with_its_data_file(host_bundle, program):
    res = run_local(host_bundle.path, program / "model.pte", data=program / "model.ptd",
                    options=RunOptions(threads="auto", warmup=0, iterations=1))
    if res.header.hardware_threads < 2:
        pytest.skip("one core: --threads auto runs no trial")
    assert res.header.threads_auto is not None, "the trial's module could not load the program"
    assert all(t.median_ns > 0 for t in res.header.threads_auto.trials)


def test_without_its_data_file_the_program_fails_at_load(host_bundle, program):
    res = run_local(host_bundle.path, program / "model.pte", warmup=0, iterations=1, check=False)
    assert res.exit_code == 10 and res.error.stage == "load"
    assert "--ptd" in res.error.message and "model.pte" in res.error.message
    assert res.load is None


def test_a_missing_or_foreign_data_file_fails_at_load_naming_it(host_bundle, program, tmp_path):
    missing = tmp_path / "nowhere.ptd"
    res = run_local(host_bundle.path, program / "model.pte", warmup=0, iterations=1, check=False, data=missing)
    assert res.exit_code == 10 and res.error.stage == "load" and str(missing) in res.error.message
    foreign = tmp_path / "foreign.ptd"
    foreign.write_bytes((program / "model.pte").read_bytes())  # a file, but not a .ptd
    res = run_local(host_bundle.path, program / "model.pte", warmup=0, iterations=1, check=False, data=foreign)
    assert res.exit_code == 10 and res.error.stage == "load" and str(foreign) in res.error.message


def test_the_bundle_advertises_the_data_file_and_preflight_refuses_an_older_one(host_bundle, artifact):
    manifest = read_manifest(artifact)
    assert "ptd" in host_bundle.raw["features"]
    assert preflight(manifest, host_bundle).ok
    old = dataclasses.replace(host_bundle, raw={k: v for k, v in host_bundle.raw.items() if k != "features"})
    report = preflight(manifest, old)
    assert not report.ok and any("model.ptd" in p and "--ptd" in p for p in report.problems)
    with pytest.raises(PreflightError, match="external data file"):
        check_compatible(manifest, old)
    # an artifact without a data file does not care
    no_data = dataclasses.replace(manifest, files={"pte": "model.pte"}, data_bytes=None, data_sha256=None)
    assert preflight(no_data, old).ok


def test_argv_builders_pass_the_data_file_in_every_mode(host_bundle):
    fwd = runner_argv(host_bundle, "/d/model.pte", data="/d/model.ptd")
    llm = runner_argv(host_bundle, "/d/model.pte", data="/d/model.ptd", llm_args=["--llm", "generate"])
    batch = runner_argv(host_bundle, "/d/model.pte", data="/d/model.ptd", input_batch="/d/b.npy",
                        batch_output="/d/o.npy", batch_only=True)
    for argv in (fwd, llm, batch):
        assert argv[argv.index("--ptd") + 1] == "/d/model.ptd"
    assert "--ptd" not in runner_argv(host_bundle, "/d/model.pte")
    assert "--ptd" not in runner_argv(host_bundle, "/d/model.pte", llm_args=["--llm", "generate"])


def test_deploy_to_local_pushes_the_data_file_and_the_forward_mode_runs(host_bundle, artifact, tmp_path):
    with resolve_device(f"local://?work_dir={tmp_path / 'dev'}") as dev:
        dep = deploy(artifact, dev, bundle=host_bundle)
        assert "model.ptd" in dep.pushed and dep.data is not None and dep.data.endswith("/model.ptd")
        assert Path(dep.data).read_bytes() == (artifact / "model.ptd").read_bytes()
        assert dep.to_json()["data"] == dep.data
        again = deploy(artifact, dev, bundle=host_bundle)
        assert "model.ptd" in again.skipped and again.data == dep.data
        run = run_on_device(artifact, dev, run_dir=tmp_path / "run", options=RunOptions(warmup=0, iterations=2))
    assert run.result.load.data == dep.data
    got = np.load(run.outputs[0])
    want = read_manifest(artifact).load_test_vector(0).outputs[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_swapped_data_file_is_refused_before_anything_is_pushed(artifact, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(artifact, swapped)
    blob = bytearray((swapped / "model.ptd").read_bytes())
    blob[-1] ^= 0xFF
    (swapped / "model.ptd").write_bytes(bytes(blob))
    work = tmp_path / "dev"
    with resolve_device(f"local://?work_dir={work}") as dev:
        with pytest.raises(ArtifactError, match="model.ptd"):
            deploy(swapped, dev)
    assert not any(p.is_file() for p in work.rglob("*")) if work.exists() else True
    manifest = json.loads((swapped / "manifest.json").read_text())
    assert manifest["files"]["data"] == "model.ptd"


def test_a_cross_built_bundle_records_what_its_runner_advertises(aarch64_bundle):
    # read from the runner's own header under qemu at build time, as its operators are
    assert "ptd" in aarch64_bundle.raw["features"]


def test_edgerun_run_on_this_machine_passes_the_data_file(host_bundle, artifact, tmp_path):
    from edgerun.runtime.runner import run_artifact_local

    out = run_artifact_local(artifact, host_bundle.path, options=RunOptions(warmup=0, iterations=1),
                             outputs_dir=tmp_path / "out")
    assert out["preflight"]["ok"]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "output_0.npy"),
                               read_manifest(artifact).load_test_vector(0).outputs[0], rtol=1e-5, atol=1e-5)
