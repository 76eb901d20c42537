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
    manifest: object = None  # the directory as a typed artifact: test vector 0 = inputs + eager reference
    output_files: list[Path] = None  # ``outputs`` saved as .npy, as a device run pulls them


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
    (out / "vectors" / "000").mkdir(parents=True)
    np.save(out / "vectors" / "000" / "input_0.npy", x[0].numpy())
    for j, r in enumerate(reference):
        np.save(out / "vectors" / "000" / f"output_{j}.npy", r)
    (out / "pulled").mkdir()
    output_files = []
    for j, t in enumerate(outputs):
        np.save(out / "pulled" / f"output_{j}.npy", t.numpy())
        output_files.append(out / "pulled" / f"output_{j}.npy")
    typed = manifest(path=out, test_vectors=[{"inputs": ["vectors/000/input_0.npy"],
                                              "outputs": [f"vectors/000/output_{j}.npy" for j in range(len(reference))]}])
    return ProfiledProgram(dir=out, pte=out / "model.pte", etrecord=out / "model.etrecord",
                           etdump=out / "run.etdump", inputs=[x[0].numpy()], reference=reference,
                           outputs=[t.numpy() for t in outputs], execute_ns=times, manifest=typed,
                           output_files=output_files)


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


def manifest(name="tinynet", scheme="fp32", pte_bytes=12345, path=None, **extra):
    """A typed manifest of a small program (``path``: an artifact directory holding its files)."""
    from edgerun.core.artifact import Manifest

    d = {"schema": "edgerun.artifact", "schema_version": 1, "status": "ok", "model": {"name": name},
         "target": {"name": "host-x86_64", "arch": "x86_64", "cpu": "generic"},
         "scheme": {"name": scheme, "recipe_hash": "abc123"}, "recipe_hash": "abc123",
         "versions": {"edgerun": "0.1.0", "executorch": "1.5.1", "torch": "2.14.1"},
         "inputs": [{"name": "x", "shape": [1, 3, 48, 48], "dtype": "float32"}],
         "outputs": [{"name": "top3", "shape": [1, 3], "dtype": "float32"},
                     {"name": "logits", "shape": [1, 10], "dtype": "float32"}],
         "files": {"pte": "model.pte", "etrecord": "model.etrecord"}, "pte_bytes": pte_bytes,
         "pte_sha256": "0" * 64, "planned_memory_bytes": 65536, "operators": {}, "test_vectors": [], **extra}
    return Manifest.from_json(d, path=path)


HOST_INFO = {"arch": "x86_64", "cpu_model": "test cpu", "cores": 2, "mem_total_bytes": 8 << 30, "os": "Debian",
             "kernel": "6.1", "governor": None, "freq_khz": None, "temperature_c": None, "emulated": False,
             "transport": "local"}
QEMU_INFO = {**HOST_INFO, "arch": "aarch64", "cpu_model": "Cortex-A76", "emulated": True,
             "emulator": "qemu-aarch64 -cpu cortex-a76"}

_STAGE_CODES = {"usage": 2, "load": 10, "input": 11, "execute": 12, "output": 13}


def run_of(lines, info, *, device_name="local", etdump=None, outputs=(), dataset_outputs=None,
           bundle_bytes=None):
    """The RunArtifacts of a run whose runner printed ``lines`` (exit code as the runner would give)."""
    import json

    from edgerun.devices.base import DeviceInfo
    from edgerun.runtime.protocol import RunArtifacts, parse_runner_output

    err = next((ln for ln in lines if ln.get("type") == "error"), None)
    done = any(ln.get("type") == "summary" for ln in lines)
    code = _STAGE_CODES.get(err.get("stage"), 1) if err else (0 if done else 137)
    result = parse_runner_output("\n".join(json.dumps(ln) for ln in lines), exit_code=code)
    return RunArtifacts(result=result, device_name=device_name,
                        device_info=info if isinstance(info, DeviceInfo) else DeviceInfo(**info),
                        etdump=Path(etdump) if etdump else None, outputs=[Path(p) for p in outputs],
                        dataset_outputs=dataset_outputs, bundle_bytes=bundle_bytes)


def analyse_lines(lines, manifest, info, *, device_name="local", etdump_path=None, outputs=(), skip_runs=0,
                  sweep_id=None, cell=None, run_id=None, vector=0, seed=0):
    """``analyse`` of runner lines: the tests' short way to a record."""
    from edgerun.runtime.analysis import AnalysisSettings, analyse

    run = run_of(lines, info, device_name=device_name, etdump=etdump_path, outputs=outputs)
    return analyse(run, manifest, AnalysisSettings(vector=vector, skip_runs=skip_runs, sweep_id=sweep_id, cell=cell,
                                                   run_id=run_id, seed=seed))


@pytest.fixture(scope="session")
def real_record(profiled_program):
    """A record analysed from the real program's timings, ETDump, ETRecord and outputs."""
    times = profiled_program.execute_ns
    return analyse_lines(runner_lines(times[WARMUP:], warmup_ns=times[:WARMUP]), profiled_program.manifest,
                         HOST_INFO, device_name="local", etdump_path=profiled_program.etdump, skip_runs=WARMUP,
                         outputs=profiled_program.output_files)


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
