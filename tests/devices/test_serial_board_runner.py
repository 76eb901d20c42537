"""The board-runner contract of SERIAL_PROTOCOL.md ("Board runners"), tested against the host serial agent
standing in for a board whose ExecuTorch runner is resident (``--runner BUNDLE_DIR``): HELLO describes the
runner, the program and the inputs are loaded with PUT, one RUN of ``edgerun-runner`` runs warm-ups and N
timed iterations and returns the runner's JSON lines (a timing per iteration), and the outputs and the ETDump
are fetched with GET. The real native runner (the host bundle) answers, on real pseudo-terminals; nothing of
the bundle is pushed. Its results are emulated (the agent says so)."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.devices import resolve_device, sync_files


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """A two-layer MLP exported for host int8 (XNNPACK), once."""
    import torch

    from edgerun.core.artifact import read_manifest
    from edgerun.export import ExportOptions, export_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    out = tmp_path_factory.mktemp("board-runner") / "mlp"
    export_model(model, "host", "int8", out, example_inputs=(torch.randn(1, 8),), name="mlp",
                 options=ExportOptions(vectors=1))
    return read_manifest(out)


def test_a_resident_runner_loads_a_program_runs_it_n_times_and_returns_timings_outputs_and_an_etdump(
        serial_line, runner_bundle, tiny_int8, tmp_path):
    from edgerun.runtime.protocol import Iteration, parse_runner_output

    bundle = runner_bundle("host")
    m = tiny_int8
    uri, _link, _agent, sandbox = serial_line(agent_args=("--runner", str(bundle.path)))
    inputs = m.vector_input_paths(0)
    with resolve_device(uri) as dev:
        runner = dev.resident_runner
        assert runner is not None and runner["argv0"] == "edgerun-runner" and runner["runner_protocol"] == 1
        assert runner["arch"] == bundle.arch and "XnnpackBackend" in runner["backends"]
        assert runner["executorch"] == bundle.executorch_version and runner["operators"] > 0
        # load the program and set the inputs: files put into the board's store, nothing of the bundle
        loaded = sync_files(dev, {"model.pte": m.verified_pte(), **{p.name: p for p in inputs}})
        assert sorted(loaded.pushed) == sorted(["model.pte", *(p.name for p in inputs)])
        out = f"{dev.work_dir}/run"
        res = dev.exec(["edgerun-runner", "--model", loaded.paths["model.pte"],
                        *(a for p in inputs for a in ("--input", loaded.paths[p.name])),
                        "--warmup", "1", "--iterations", "5", "--etdump", f"{out}/etdump.etdp", "--output-dir", out],
                       timeout=120, cwd=dev.work_dir)
        dev.pull(f"{out}/output_0.npy", tmp_path / "output_0.npy")
        dev.pull(f"{out}/etdump.etdp", tmp_path / "etdump.etdp")
        info = dev.info()
    assert res.rc == 0, res.stderr
    parsed = parse_runner_output(res.stdout, exit_code=res.rc, stderr=res.stderr)
    its = [ln for ln in parsed.typed if isinstance(ln, Iteration)]
    timed = [s for s in its if not s.warmup]
    assert not parsed.protocol_problems and parsed.summary is not None
    assert len(timed) == 5 and len(its) == 6 and all(s.execute_ns > 0 for s in timed)
    got = np.load(tmp_path / "output_0.npy")
    want = m.load_test_vectors()[0].outputs[0]
    assert got.shape == want.shape and np.abs(got - want).max() <= 0.1 * np.abs(want).max()
    assert (tmp_path / "etdump.etdp").stat().st_size > 0
    assert not any(p.name == "edgerun-runner" for p in sandbox.rglob("*"))   # resident: never pushed
    assert info.emulated   # the agent stands in for the board: its timings are emulated, not measured


def test_without_a_resident_runner_hello_names_none_and_the_name_is_an_ordinary_command(serial_line):
    uri, *_ = serial_line()
    with resolve_device(uri) as dev:
        assert dev.resident_runner is None
        res = dev.exec(["edgerun-runner", "--model", "x.pte"], timeout=20)
    assert res.rc == 127   # no such program on a board without one
