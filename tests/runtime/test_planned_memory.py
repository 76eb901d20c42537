"""The runner gives a method its memory plan as anonymous mappings (runtime/native/src/planned_memory.cpp):
a page becomes resident when the program first writes it, not all of the plan at load. A plan is sized for
every dynamic dimension's upper bound, which for an LLM's logits at a long max context is hundreds of MB
that a decode step never touches."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgerun.runtime.protocol import parse_runner_output

BOUND = 1 << 19   # rows of the dynamic input: the plan holds a few [BOUND, 64] float32 tensors (128 MiB each)


@pytest.fixture(scope="module")
def wide_plan(tmp_path_factory):
    import torch
    from executorch.exir import to_edge

    from edgerun.export.program import describe_program

    class Affine(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2.0 + 1.0

    n = torch.export.Dim("N", min=1, max=BOUND)
    ep = torch.export.export(Affine(), (torch.randn(4, 64),), dynamic_shapes={"x": {0: n}})
    pte = tmp_path_factory.mktemp("plan") / "wide.pte"
    program = to_edge(ep).to_executorch()
    pte.write_bytes(program.buffer)
    return pte, describe_program(program.executorch_program)["planned_memory_bytes"]


def test_a_runs_resident_memory_is_what_it_writes_not_the_whole_plan(wide_plan, runner_bundle, tmp_path):
    pte, planned = wide_plan
    assert planned >= 2 * BOUND * 64 * 4            # the plan: input and output at their bound, at least
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    p = subprocess.run([str(runner_bundle().path / "edgerun-runner"), "--model", str(pte), "--input",
                        str(tmp_path / "x.npy"), "--iterations", "3", "--threads", "1", "--output-dir", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = parse_runner_output(p.stdout, exit_code=p.returncode)
    np.testing.assert_allclose(np.load(out / "output_0.npy"), np.maximum(x, 0) * 2 + 1, rtol=1e-6)
    # Module's own zero-filled buffers made the whole plan resident at load (measured: 262 MiB, now 6)
    assert r.summary.peak_rss_kb * 1024 < planned / 4, (r.summary.peak_rss_kb, planned)
