"""``edgerun-runner --input-batch/--batch-output``: many samples in one invocation, outside the timing."""

from __future__ import annotations

import numpy as np
import pytest
from rt_helpers import manifest_of, vector_inputs

from edgerun.runtime.runner import RunnerError, run_local


def _pybindings(artifact, samples):
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(artifact / "model.pte")).load_method("forward")
    return np.stack([method.execute([torch.from_numpy(s)])[0].numpy().copy() for s in samples])


def test_batch_runs_every_sample_once_after_the_timed_iterations(host_bundle, artifacts, tmp_path):
    art = artifacts["fp32"]
    first = np.load(vector_inputs(art)[0])
    rng = np.random.default_rng(0)
    samples = np.stack([first] + [rng.standard_normal(first.shape).astype(first.dtype) for _ in range(4)])
    np.save(tmp_path / "batch.npy", samples)
    res = run_local(host_bundle.path, art / "model.pte", vector_inputs(art), warmup=1, iterations=3,
                    input_batch=tmp_path / "batch.npy", batch_output=tmp_path / "out.npy")
    kinds = [ln["type"] for ln in res.lines]
    assert kinds == ["header", "load"] + ["iteration"] * 4 + ["batch", "summary"]
    b = res.batch
    assert b.samples == 5 and list(b.input_shape) == list(samples.shape) and b.dtype == "float32"
    assert b.wall_ns_total >= b.execute_ns_total > 0
    assert res.summary.iterations == 3 and len(res.execute_ns) == 3  # the batch is not a latency sample
    got = np.load(tmp_path / "out.npy")
    out_shape = list(manifest_of(art).outputs[0].shape)
    assert list(got.shape) == list(b.output_shape) == [5, *out_shape]
    # same runtime, same kernels: bit-identical to executorch's Python runtime, sample by sample
    assert np.array_equal(got, _pybindings(art, samples))


def test_batch_only_run_has_no_iterations(host_bundle, artifacts, tmp_path):
    art = artifacts["fp32"]
    np.save(tmp_path / "batch.npy", np.stack([np.load(vector_inputs(art)[0])] * 2))
    res = run_local(host_bundle.path, art / "model.pte", input_batch=tmp_path / "batch.npy",
                    batch_output=tmp_path / "out.npy", batch_only=True)
    assert not res.iterations and res.summary.iterations == 0 and res.batch.samples == 2


@pytest.mark.parametrize("make, words", [
    (lambda x: x, "expected [N,"),                              # one sample without the N dim
    (lambda x: np.stack([x, x])[:, :, :1], "expected [N,"),     # wrong sample shape
    (lambda x: np.stack([x, x]).astype(np.float64), "dtype float64"),
    (lambda x: np.zeros((0, *x.shape), x.dtype), "N >= 1"),
])
def test_a_batch_that_does_not_fit_is_an_input_error(make, words, host_bundle, artifacts, tmp_path):
    art = artifacts["fp32"]
    path = tmp_path / "bad.npy"
    np.save(path, make(np.load(vector_inputs(art)[0])))
    with pytest.raises(RunnerError) as info:
        run_local(host_bundle.path, art / "model.pte", input_batch=path, batch_output=tmp_path / "o.npy",
                  batch_only=True)
    err = info.value
    assert err.exit_code == 11 and err.result.error.stage == "input"
    assert words in err.result.error.message and str(path) in err.result.error.message
    assert not (tmp_path / "o.npy").exists()


def test_a_two_input_method_refuses_a_batch(host_bundle, two_input_artifact, tmp_path):
    art = two_input_artifact
    np.save(tmp_path / "b.npy", np.stack([np.load(vector_inputs(art)[0])]))
    with pytest.raises(RunnerError) as info:
        run_local(host_bundle.path, art / "model.pte", input_batch=tmp_path / "b.npy",
                  batch_output=tmp_path / "o.npy", batch_only=True)
    assert info.value.exit_code == 11 and "exactly one tensor input" in info.value.result.error.message
