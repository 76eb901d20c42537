"""bench opens each device once and runs different devices concurrently.

The devices are ``fake://`` boards (edgerun.devices.fake): the point here is how bench drives
devices (how often it opens them, whether two run at once), which a fake can count exactly; the real
transports are tested against a real sshd, real ptys and real qemu in tests/devices. The programs
are real exports and the bundle pushed is the real host runner bundle; what the fake board's
"runner" answers is the protocol (runtime/native/PROTOCOL.md) with the artifact's own eager outputs.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from edgerun.core.artifact import read_manifest
from edgerun.devices.fake import fake_board, reset_fake_boards
from edgerun.devices.info import DeviceInfo
from edgerun.profiling import ProfileSettings, bench
from edgerun.store import Store

FACTORIES = Path(__file__).resolve().parents[1] / "export"


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _runner(board, reference_of, barrier):
    """A handler that answers like edgerun-runner, writing the eager outputs as the run's outputs."""

    def handle(argv):
        barrier.wait(timeout=60)  # both devices must be inside a run at the same time
        out_dir = argv[argv.index("--output-dir") + 1]
        model = argv[argv.index("--model") + 1]
        outputs = reference_of(board.read(model))
        iters = int(argv[argv.index("--iterations") + 1])
        lines = [{"type": "header", "protocol": 1, "runner_version": "0.1.0", "executorch_version": "1.5.1",
                  "arch": "x86_64", "build": {"build_type": "Release"}, "threads": 1, "hardware_threads": 2},
                 {"type": "load", "program": model, "method": "forward", "load_ns": 1000, "inputs": [], "outputs": []}]
        lines += [{"type": "iteration", "index": i, "warmup": False, "execute_ns": 1_000_000 + i, "wall_ns": 1_100_000}
                  for i in range(iters)]
        for j, arr in enumerate(outputs):
            board.write(f"{out_dir}/output_{j}.npy", _npy(arr))
        lines.append({"type": "summary", "iterations": iters, "warmup": 0, "peak_rss_kb": 1000, "rss_kb": 900,
                      "outputs": [{"index": j, "shape": list(a.shape), "dtype": str(a.dtype),
                                   "path": f"{out_dir}/output_{j}.npy"} for j, a in enumerate(outputs)]})
        return 0, "\n".join(json.dumps(ln) for ln in lines).encode() + b"\n", b""

    return handle


def test_bench_opens_each_device_once_and_runs_devices_concurrently(runner_bundle, edgerun_home, tmp_path,
                                                                    monkeypatch):
    runner_bundle("host")  # the bundle bench will push (built once per session)
    monkeypatch.syspath_prepend(str(FACTORIES))
    reset_fake_boards()
    barrier = threading.Barrier(2)
    references: dict[bytes, list] = {}

    def reference_of(pte: bytes):
        return references[pte]

    for name in ("board-a", "board-b"):
        board = fake_board(name)
        board.info = DeviceInfo(arch="x86_64", cpu_model="fake", cores=2, emulated=True, emulator="fake",
                                transport="fake")
        runner = _runner(board, reference_of, barrier)
        # the runner is started by its path in the bundle directory on the device
        board.default = lambda argv, runner=runner: runner(argv) if argv[0].endswith("edgerun-runner") else \
            (127, b"", f"no {argv[0]}\n".encode())

    settings = ProfileSettings(warmup=0, iterations=3, etdump=False, task_accuracy=False)
    # export first, so the handler knows each program's eager outputs
    from edgerun.profiling import ensure_artifact

    for scheme in ("fp32", "int8"):
        m = read_manifest(ensure_artifact("factories:tiny", "host", scheme))
        references[m.verified_pte().read_bytes()] = m.load_test_vector(0).outputs

    with Store(tmp_path / "s.sqlite") as store:
        result = bench("factories:tiny", ["host"], ["fp32", "int8"], ["fake://board-a", "fake://board-b"], settings,
                       store=store)
    assert not result["failures"], result["failures"]
    assert result["cells"] == 4 and len(result["run_ids"]) == 4
    for name in ("board-a", "board-b"):
        board = fake_board(name)
        assert board.opened == 1, f"{name} was opened {board.opened} times for its two cells"
        assert board.closed == 1
        assert sum(c.argv[0].endswith("edgerun-runner") for c in board.calls) == 2
    with Store(tmp_path / "s.sqlite") as store:
        records = [store.get(r) for r in result["run_ids"]]
    assert {r.device_name for r in records} == {"fake://board-a", "fake://board-b"}
    assert all(r.accuracy.min_snr_db == float("inf") for r in records)  # the eager outputs, bit for bit
    reset_fake_boards()
