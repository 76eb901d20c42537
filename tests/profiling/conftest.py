"""A small real program, lowered to XNNPACK with its ETRecord, run by the real ExecuTorch runtime
(pybindings) with an ETDump recorded. Built once per session (about 15 s on a laptop core)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

WARMUP = 2
TIMED = 8


@dataclass
class ProfiledProgram:
    dir: Path
    pte: Path
    etrecord: Path
    etdump: Path  # WARMUP + TIMED runs recorded (pybindings cannot reset the ETDump)
    inputs: list[np.ndarray]
    reference: list[np.ndarray]  # eager outputs
    outputs: list[np.ndarray]  # outputs of the ExecuTorch runtime
    execute_ns: list[int]  # wall time around forward(), warm-up first


@pytest.fixture(scope="session")
def profiled_program(tmp_path_factory) -> ProfiledProgram:
    torch = pytest.importorskip("torch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    class Net(torch.nn.Module):
        """conv+relu and linear lower to XNNPACK; mean (no keepdim) and topk stay portable kernels."""

        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3)
            self.c2 = torch.nn.Conv2d(16, 32, 3)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            y = torch.relu(self.c2(torch.relu(self.c1(x))))
            y = self.fc(y.mean(dim=(2, 3)))
            return torch.topk(y, 3).values, y

    torch.manual_seed(0)
    model = Net().eval()
    x = (torch.randn(1, 3, 48, 48),)
    out = tmp_path_factory.mktemp("program")
    edge = to_edge_transform_and_lower(torch.export.export(model, x), partitioner=[XnnpackPartitioner()],
                                       generate_etrecord=True)
    prog = edge.to_executorch()
    (out / "model.pte").write_bytes(prog.buffer)
    prog.get_etrecord().save(str(out / "model.etrecord"))
    with torch.no_grad():
        reference = [t.numpy() for t in model(*x)]

    module = _load_for_executorch(str(out / "model.pte"), enable_etdump=True)
    times = []
    for _ in range(WARMUP + TIMED):
        t0 = time.perf_counter_ns()
        outputs = module.forward(x)
        times.append(time.perf_counter_ns() - t0)
    module.write_etdump_result_to_file(str(out / "run.etdump"))
    return ProfiledProgram(dir=out, pte=out / "model.pte", etrecord=out / "model.etrecord",
                           etdump=out / "run.etdump", inputs=[x[0].numpy()], reference=reference,
                           outputs=[t.numpy() for t in outputs], execute_ns=times)
