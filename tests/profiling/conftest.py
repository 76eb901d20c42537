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


# ------------------------------------------------------------------ runner lines and manifests
def runner_lines(execute_ns, *, warmup_ns=(), wall_extra_ns=20_000, threads=2, peak_rss_kb=20480,
                 executorch_version="1.5.1", arch="x86_64", etdump=None):
    """Lines in the runner's protocol (runtime/native/PROTOCOL.md, version 1) around given samples."""
    lines = [{"type": "header", "protocol": 1, "runner_version": "0.1.0", "runner_source_hash": "test",
              "executorch_version": executorch_version, "arch": arch,
              "build": {"compiler": "GCC", "build_type": "Release"}, "threads": threads, "hardware_threads": 2,
              "pid": 1},
             {"type": "load", "program": "model.pte", "method": "forward", "load_mode": "mmap",
              "program_load_ns": 1_000_000, "method_load_ns": 4_000_000, "load_ns": 5_000_000,
              "inputs": [{"index": 0, "shape": [1, 3, 48, 48], "dtype": "float32", "nbytes": 27648,
                          "source": "fill:random"}],
              "outputs": []}]
    for i, ns in enumerate(warmup_ns):
        lines.append({"type": "iteration", "index": i, "warmup": True, "execute_ns": int(ns),
                      "wall_ns": int(ns) + wall_extra_ns})
    for i, ns in enumerate(execute_ns):
        lines.append({"type": "iteration", "index": i, "warmup": False, "execute_ns": int(ns),
                      "wall_ns": int(ns) + wall_extra_ns})
    lines.append({"type": "summary", "iterations": len(execute_ns), "warmup": len(warmup_ns),
                  "timed_total_ns": int(sum(execute_ns)), "peak_rss_kb": peak_rss_kb, "rss_kb": peak_rss_kb - 100,
                  "outputs": [], "etdump": {"path": str(etdump), "bytes": 1} if etdump else None})
    return lines


def manifest(name="tinynet", scheme="fp32", pte_bytes=12345):
    return {"schema_version": 1, "status": "ok", "model": {"name": name},
            "target": {"name": "host-x86_64", "arch": "x86_64", "cpu": "generic"},
            "scheme": {"name": scheme, "recipe_hash": "abc123"},
            "versions": {"edgerun": "0.1.0", "executorch": "1.5.1", "torch": "2.14.1"},
            "inputs": [{"name": "x", "shape": [1, 3, 48, 48], "dtype": "float32"}],
            "outputs": [{"name": "top3", "shape": [1, 3], "dtype": "float32"},
                        {"name": "logits", "shape": [1, 10], "dtype": "float32"}],
            "files": {"pte": "model.pte", "etrecord": "model.etrecord"}, "pte_bytes": pte_bytes,
            "planned_memory_bytes": 65536, "operators": {}, "test_vectors": []}


HOST_INFO = {"arch": "x86_64", "cpu_model": "test cpu", "cores": 2, "mem_total_bytes": 8 << 30, "os": "Debian",
             "kernel": "6.1", "governor": None, "freq_khz": None, "temperature_c": None, "emulated": False,
             "transport": "local"}
QEMU_INFO = {**HOST_INFO, "arch": "aarch64", "cpu_model": "Cortex-A76", "emulated": True,
             "emulator": "qemu-aarch64 -cpu cortex-a76"}


@pytest.fixture(scope="session")
def real_record(profiled_program):
    """A record analysed from the real program's timings, ETDump, ETRecord and outputs."""
    from edgerun.runtime.record import analyse

    times = profiled_program.execute_ns
    return analyse(runner_lines(times[WARMUP:], warmup_ns=times[:WARMUP]), manifest(), HOST_INFO,
                   device_name="local", etdump_path=profiled_program.etdump, etrecord_path=profiled_program.etrecord,
                   skip_runs=WARMUP, outputs=profiled_program.outputs, reference=profiled_program.reference,
                   artifact_dir=profiled_program.dir)


@pytest.fixture(scope="session")
def interleaved_runs(profiled_program):
    """Two runs of the same program, iterations interleaved A B A B ... so machine load hits both alike."""
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    import torch

    x = (torch.from_numpy(profiled_program.inputs[0]),)
    mods = [_load_for_executorch(str(profiled_program.pte)) for _ in range(2)]
    for m in mods:
        m.forward(x)  # warm-up
    a, b = [], []
    for _ in range(60):
        for m, acc in ((mods[0], a), (mods[1], b)):
            t0 = time.perf_counter_ns()
            m.forward(x)
            acc.append(time.perf_counter_ns() - t0)
    return a, b


# ------------------------------------------------------------------ the native runner (real bundles)
@pytest.fixture(scope="session")
def host_runner_bundle(runner_bundle):
    return runner_bundle("host")


@pytest.fixture(scope="session")
def aarch64_runner_bundle(runner_bundle):
    return runner_bundle("aarch64")
