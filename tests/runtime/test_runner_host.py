"""The host runner on real programs: outputs, the JSON-lines protocol, threads, ETDump, inputs."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from rt_helpers import pybindings_outputs, vector_inputs, within_export_thresholds

from edgerun.runtime.protocol import XnnpackOptions
from edgerun.runtime.runner import RunOptions, parse_runner_output, run_local, runner_argv


@pytest.mark.parametrize("kind", ["fp32", "int8", "portable"])
def test_outputs_equal_pybindings_and_agree_with_eager(kind, host_bundle, artifacts, tmp_path):
    art = artifacts[kind]
    res = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), warmup=1, iterations=2,
                    outputs_dir=tmp_path)
    got = [np.load(p) for p in res.output_paths]
    want = pybindings_outputs(art)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        # same runtime, same kernels, same inputs: the native runner must be bit-identical
        assert np.array_equal(g, w), f"max abs diff {np.abs(g - w).max()}"
    assert within_export_thresholds(art, got) == []


def test_protocol_lines_and_timing(host_bundle, artifacts, tmp_path):
    art = artifacts["fp32"]
    res = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), warmup=2, iterations=5,
                    outputs_dir=tmp_path)
    kinds = [ln["type"] for ln in res.lines]
    assert kinds == ["header", "load"] + ["iteration"] * 7 + ["summary"]
    h = res.header
    assert h.protocol == 1 and h.arch == host_bundle.arch
    assert h.executorch_version == host_bundle.executorch_version
    assert h.runner_source_hash == host_bundle.runner_source_hash
    assert "ET_USE_THREADPOOL" in h.build["definitions"] and h.build["build_type"] == "Release"
    assert res.load.method == "forward" and res.load.load_ns == (
        res.load.program_load_ns + res.load.method_load_ns) > 0
    assert list(res.load.inputs[0].shape) == [1, 3, 16, 16] and res.load.inputs[0].dtype == "float32"
    warm = [it for it in res.iterations if it.warmup]
    assert [it.index for it in warm] == [0, 1]
    assert [it.index for it in res.iterations if not it.warmup] == [0, 1, 2, 3, 4]
    assert len(res.execute_ns) == 5 and all(isinstance(x, int) and x > 0 for x in res.execute_ns)
    assert all(w >= e for w, e in zip(res.wall_ns, res.execute_ns))
    s = res.summary
    assert s.iterations == 5 and s.warmup == 2 and s.timed_total_ns == sum(res.execute_ns)
    assert s.peak_rss_kb >= s.rss_kb > 0
    assert list(s.outputs[0].shape) == [1, 10] and s.etdump is None


def test_etdump_holds_only_the_timed_iterations(host_bundle, artifacts, tmp_path):
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    art = artifacts["portable"]
    etdump = tmp_path / "run.etdp"
    res = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), warmup=3, iterations=4,
                    etdump_path=etdump)
    assert res.summary.etdump == {"path": str(etdump), "bytes": etdump.stat().st_size}
    dump = deserialize_from_etdump_flatcc(etdump.read_bytes())
    assert [r.name for r in dump.run_data] == ["Execute"] * 4  # 3 warm-ups excluded
    # the portable program's kernels were profiled (operator events, not just the method)
    names = {e.profile_event.name for r in dump.run_data for e in (r.events or []) if e.profile_event}
    assert any("convolution" in (n or "") for n in names), names


def test_thread_count_is_applied_and_reported(host_bundle, artifacts):
    art = artifacts["fp32"]
    for threads in (1, 2):
        res = run_local(host_bundle.path, art / "model.pte", threads=threads, warmup=0, iterations=1)
        assert res.header.threads == threads


def test_auto_threads_measures_both_pools_and_keeps_the_faster(host_bundle, artifacts):
    """--threads auto: the runner times every core and one thread, reports both, and runs with the winner."""
    import os

    art = artifacts["fp32"]
    res = run_local(host_bundle.path, art / "model.pte", options=RunOptions(threads="auto", warmup=0, iterations=2))
    cores = os.cpu_count() or 1
    if cores == 1:
        assert res.header.threads_auto is None and res.header.threads == 1
        return
    trial = res.header.threads_auto
    by_threads = trial.median_by_threads()
    assert set(by_threads) == {1, res.header.hardware_threads} and all(v > 0 for v in by_threads.values())
    # the rule as documented: one thread unless every core is at least 5 % faster
    expected = 1 if by_threads[1] <= by_threads[max(by_threads)] * 1.05 else max(by_threads)
    assert trial.measure == "forward" and trial.chosen == expected == res.header.threads
    # an explicit count runs no trial
    assert run_local(host_bundle.path, art / "model.pte", threads=1, warmup=0, iterations=1).header.threads_auto is None


def test_xnnpack_backend_options_are_applied_and_reported(host_bundle, artifacts):
    art = artifacts["fp32"]
    res = run_local(host_bundle.path, art / "model.pte", warmup=0, iterations=1,
                    options=RunOptions(xnnpack_workspace="per-model", xnnpack_weight_cache=True, warmup=0))
    assert res.header.xnnpack == XnnpackOptions(workspace_sharing="per-model", weight_cache=True, reshape="on-change",
                                               operator_timer=False)
    bad = subprocess.run([str(host_bundle.path / "edgerun-runner"), "--model", str(art / "model.pte"),
                          "--xnnpack-workspace", "shared"], capture_output=True, text=True)
    assert bad.returncode == 2 and "disabled, per-model or global" in bad.stdout


def test_min_time_keeps_iterating(host_bundle, artifacts):
    art = artifacts["portable"]
    opts = RunOptions(warmup=0, iterations=2, min_time_ms=30, max_iterations=100000)
    res = run_local(host_bundle.path, art / "model.pte", options=opts)
    assert sum(res.execute_ns) >= 30_000_000 and len(res.execute_ns) > 2
    # max_iterations caps only the extension: the asked-for iterations always run
    capped = run_local(host_bundle.path, art / "model.pte",
                       options=RunOptions(warmup=0, iterations=5, min_time_ms=60_000, max_iterations=3))
    assert len(capped.execute_ns) == 5


def test_raw_input_file_gives_the_same_result_as_npy(host_bundle, artifacts, tmp_path):
    art = artifacts["fp32"]
    (npy,) = vector_inputs(art)
    raw = tmp_path / "input.bin"
    raw.write_bytes(np.load(npy).tobytes())
    a = run_local(host_bundle.path, art / "model.pte", [npy], iterations=1, outputs_dir=tmp_path / "a")
    b = run_local(host_bundle.path, art / "model.pte", [raw], iterations=1, outputs_dir=tmp_path / "b")
    assert a.load.inputs[0].source == f"file:{npy}"
    assert np.array_equal(np.load(a.output_paths[0]), np.load(b.output_paths[0]))


def test_generated_inputs_are_seeded(host_bundle, two_input_artifact, tmp_path):
    pte = two_input_artifact / "model.pte"
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        opts = RunOptions(warmup=0, iterations=1, fill="random", seed=seed)
        res = run_local(host_bundle.path, pte, options=opts, outputs_dir=tmp_path / name)
        assert [i.source for i in res.load.inputs] == ["fill:random"] * 2
        assert len(res.output_paths) == 2
        outs.append(np.load(res.output_paths[0]))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    zeros = run_local(host_bundle.path, pte, options=RunOptions(warmup=0, iterations=1, fill="zeros"),
                      outputs_dir=tmp_path / "z")
    assert not np.load(zeros.output_paths[0]).any()


def test_list_kernels_and_version_lines(host_bundle):
    argv = [str(host_bundle.path / "edgerun-runner"), "--list-kernels"]
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    res = parse_runner_output(proc.stdout, exit_code=proc.returncode, argv=argv)
    assert res.ok and list(res.kernels.backends) == list(host_bundle.backends)
    assert list(res.kernels.operators) == list(host_bundle.operators)
    proc = subprocess.run([str(host_bundle.path / "edgerun-runner"), "--version"], capture_output=True, timeout=60)
    res = parse_runner_output(proc.stdout, exit_code=proc.returncode)
    assert res.ok and [ln["type"] for ln in res.lines] == ["header"]


def test_argv_for_a_bundle_elsewhere(host_bundle, aarch64_bundle):
    opts = RunOptions(warmup=2, iterations=7, threads=4)
    argv = runner_argv(aarch64_bundle, "/data/m.pte", inputs=["/data/in0.npy"], options=opts,
                       etdump="/data/e.etdp", output_dir="/data/out", bundle_dir="/data/b",
                       emulator=["qemu-aarch64", "-cpu", "cortex-a76"])
    assert argv[:7] == ["qemu-aarch64", "-cpu", "cortex-a76", "/data/b/ld-linux-aarch64.so.1",
                        "--library-path", "/data/b", "/data/b/edgerun-runner"]
    flat = " ".join(argv)
    for part in ("--model /data/m.pte", "--warmup 2", "--iterations 7", "--threads 4", "--input /data/in0.npy",
                 "--etdump /data/e.etdp", "--output-dir /data/out"):
        assert part in flat
    assert runner_argv(host_bundle, "m.pte", bundle_dir="/b")[0] == "/b/edgerun-runner"


def test_run_options_are_validated():
    for bad in (dict(iterations=0), dict(warmup=-1), dict(fill="noise"), dict(load_mode="swap"),
                dict(threads=-2), dict(threads="fast"), dict(method=""), dict(max_iterations=0),
                dict(xnnpack_workspace="shared")):
        with pytest.raises(ValueError):
            RunOptions(**bad)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_slim_bundle_runs_fully_delegated_programs(kind, slim_bundle, host_bundle, artifacts, tmp_path):
    from rt_helpers import manifest_of

    from edgerun.runtime.preflight import preflight

    art = artifacts[kind]
    assert manifest_of(art).operators.non_delegated == {}
    assert preflight(manifest_of(art), slim_bundle).ok
    slim = run_local(slim_bundle.path, art / "model.pte", vector_inputs(art), iterations=1,
                     outputs_dir=tmp_path / "slim")
    full = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), iterations=1,
                     outputs_dir=tmp_path / "full")
    assert slim.header.build["variant"] == "slim" and full.header.build["variant"] == "full"
    for a, b in zip(slim.output_paths, full.output_paths):
        assert np.array_equal(np.load(a), np.load(b))
