"""The runner answers ExecuTorch's per-execute XNNPACK reshape and setup calls without the work when nothing
changed (--xnnpack-reshape on-change, the default; runtime/native/src/xnnpack_calls.cpp): the calls do reach
the runner, a static-shape program is reshaped and set up once per partition, and its outputs are the bits
ExecuTorch's own behaviour (--xnnpack-reshape always) gives."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from rt_helpers import pybindings_outputs, vector_inputs

from edgerun.runtime.runner import RunOptions, parse_runner_output, run_local

WARMUP, ITERATIONS = 2, 5
EXECUTES = WARMUP + ITERATIONS


def _run(bundle, art, policy, out_dir):
    out_dir.mkdir()
    res = run_local(bundle.path, art / "model.pte", vector_inputs(art), outputs_dir=out_dir,
                    options=RunOptions(warmup=WARMUP, iterations=ITERATIONS, threads=1, xnnpack_reshape=policy))
    return res, [np.load(p) for p in res.output_paths]


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_a_static_program_is_reshaped_and_set_up_once_with_the_same_outputs(kind, host_bundle, artifacts, tmp_path):
    art = artifacts[kind]
    always, want = _run(host_bundle, art, "always", tmp_path / "always")
    lazy, got = _run(host_bundle, art, "on-change", tmp_path / "on-change")
    assert always.header.xnnpack.reshape == "always" and lazy.header.xnnpack.reshape == "on-change"
    # no ETDump: XNNPACK's per-operator timer is left off in every runtime
    assert always.header.xnnpack.operator_timer is False and lazy.header.xnnpack.operator_timer is False

    # ExecuTorch's behaviour: every partition reshaped and set up before every execute
    calls = always.summary.xnnpack_calls.to_json()
    partitions, rest = divmod(calls["reshapes"], EXECUTES)
    assert partitions >= 1 and rest == 0
    assert calls == {"reshapes": partitions * EXECUTES, "reshapes_skipped": 0,
                     "setups": partitions * EXECUTES, "setups_skipped": 0, "runtimes_untimed": partitions}
    # on-change: the first execute does the work, the others find nothing changed
    skipped = partitions * (EXECUTES - 1)
    assert lazy.summary.xnnpack_calls.to_json() == {"reshapes": partitions, "reshapes_skipped": skipped,
                                                    "setups": partitions, "setups_skipped": skipped,
                                                    "runtimes_untimed": partitions}

    for g, w, p in zip(got, want, pybindings_outputs(art)):
        assert np.array_equal(g, w) and np.array_equal(g, p)


def test_a_program_without_xnnpack_makes_no_calls(host_bundle, artifacts, tmp_path):
    res, _ = _run(host_bundle, artifacts["portable"], "on-change", tmp_path / "out")
    assert res.summary.xnnpack_calls.to_json() == {"reshapes": 0, "reshapes_skipped": 0,
                                                   "setups": 0, "setups_skipped": 0, "runtimes_untimed": 0}


def test_an_etdump_keeps_xnnpacks_operator_timings(host_bundle, artifacts, tmp_path):
    """With --etdump the runtimes keep XNNPACK's per-operator timer, and the ETDump has an event per XNNPACK
    operator (its delegate id names it, like "Fully Connected (NC, F32) GEMM #1"); the outputs are those of a run without."""
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    art = artifacts["fp32"]
    (tmp_path / "traced").mkdir()
    etdump = tmp_path / "run.etdp"
    traced = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), outputs_dir=tmp_path / "traced",
                       etdump_path=etdump, options=RunOptions(warmup=1, iterations=2, threads=1))
    plain, want = _run(host_bundle, art, "on-change", tmp_path / "plain")
    assert traced.header.xnnpack.operator_timer is True and traced.summary.xnnpack_calls.runtimes_untimed == 0
    assert plain.summary.xnnpack_calls.runtimes_untimed >= 1
    dump = deserialize_from_etdump_flatcc(etdump.read_bytes())
    names = [e.profile_event.delegate_debug_id_str or "" for r in dump.run_data for e in (r.events or [])
             if e.profile_event]
    assert any("(NC" in n or "(NHWC" in n for n in names), sorted(set(names))[:20]
    assert all(np.array_equal(np.load(g), w) for g, w in zip(traced.output_paths, want))


def test_every_batch_sample_gets_its_own_outputs(host_bundle, artifacts, tmp_path):
    """--input-batch hands the method a new input buffer per sample: whatever the runner skips, each sample's
    output is the one ExecuTorch's own per-execute work gives."""
    art = artifacts["fp32"]
    x = np.random.default_rng(0).standard_normal((6, 1, 3, 16, 16)).astype(np.float32)
    batch = tmp_path / "x.npy"
    np.save(batch, x)
    outs = {}
    for policy in ("always", "on-change"):
        out = tmp_path / f"y-{policy}.npy"
        exe = host_bundle.path / "edgerun-runner"
        p = subprocess.run([str(exe), "--model", str(art / "model.pte"), "--input-batch", str(batch),
                            "--batch-output", str(out), "--threads", "1", "--xnnpack-reshape", policy],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        outs[policy] = np.load(out)
    assert outs["always"].shape[0] == 6
    assert np.array_equal(outs["always"], outs["on-change"])
    assert not np.array_equal(outs["always"][0], outs["always"][1])  # the samples differ, so would stale outputs


def test_a_bad_policy_is_a_usage_error(host_bundle, artifacts):
    p = subprocess.run([str(host_bundle.path / "edgerun-runner"), "--model", str(artifacts["fp32"] / "model.pte"),
                        "--xnnpack-reshape", "never"], capture_output=True, text=True)
    assert p.returncode == 2 and "on-change or always" in p.stdout
    with pytest.raises(ValueError, match="xnnpack_reshape"):
        RunOptions(xnnpack_reshape="never")


def test_a_new_input_buffer_is_set_up_again(host_bundle, tmp_path):
    """A program whose inputs the runtime does not allocate (alloc_graph_input=False, as the zeroth-order
    fine-tuning programs are) reads each batch sample where the runner holds it: the input pointer changes every
    execute, so on-change must set the runtime up again every time, and each sample gets its own output."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    ep = torch.export.export(model, (torch.randn(1, 16),))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch(
        ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    pte = tmp_path / "unplanned_input.pte"
    pte.write_bytes(program.buffer)
    x = np.random.default_rng(1).standard_normal((5, 1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs, calls = {}, {}
    for policy in ("always", "on-change"):
        out = tmp_path / f"y-{policy}.npy"
        p = subprocess.run([str(host_bundle.path / "edgerun-runner"), "--model", str(pte), "--input-batch",
                            str(tmp_path / "x.npy"), "--batch-output", str(out), "--iterations", "0",
                            "--warmup", "0", "--threads", "1", "--xnnpack-reshape", policy],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        outs[policy] = np.load(out)
        calls[policy] = parse_runner_output(p.stdout, exit_code=p.returncode).summary.xnnpack_calls.to_json()
    with torch.no_grad():
        want = np.stack([model(torch.from_numpy(s)).numpy() for s in x])
    assert np.array_equal(outs["always"], outs["on-change"])
    assert np.allclose(outs["on-change"], want, atol=1e-5)
    assert calls["always"] == {"reshapes": 5, "reshapes_skipped": 0, "setups": 5, "setups_skipped": 0,
                               "runtimes_untimed": 1}
    # the shapes never change, the buffer does (each sample sits at its own offset in the batch)
    assert calls["on-change"] == {"reshapes": 1, "reshapes_skipped": 4, "setups": 5, "setups_skipped": 0,
                                  "runtimes_untimed": 1}


@pytest.mark.qemu
def test_the_aarch64_runner_receives_the_calls_too(aarch64_bundle, qemu_board, artifacts, tmp_path):
    """The cross-built runner links the aarch64 wheel's library, which calls XNNPACK through its PLT as well."""
    art = artifacts["int8"]
    got = {}
    for policy in ("always", "on-change"):
        (tmp_path / policy).mkdir()
        res = run_local(aarch64_bundle.path, art / "model.pte", vector_inputs(art), outputs_dir=tmp_path / policy,
                        emulator=qemu_board, options=RunOptions(warmup=1, iterations=2, xnnpack_reshape=policy))
        assert res.header.arch == "aarch64"
        got[policy] = (res.summary.xnnpack_calls.to_json(), [np.load(p) for p in res.output_paths])
    partitions = got["always"][0]["reshapes"] // 3
    assert partitions >= 1 and got["always"][0]["reshapes_skipped"] == 0
    assert got["on-change"][0] == {"reshapes": partitions, "reshapes_skipped": 2 * partitions,
                                   "setups": partitions, "setups_skipped": 2 * partitions,
                                   "runtimes_untimed": partitions}
    assert all(np.array_equal(a, b) for a, b in zip(got["always"][1], got["on-change"][1]))
