"""Every way a run can go wrong ends in the right exit code, ExecuTorch error name and message.

All on the real runner with real (then damaged) files; pre-flight on real manifests and bundles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from rt_helpers import manifest_of, vector_inputs

from edgerun.runtime.preflight import PreflightError, check_compatible, preflight
from edgerun.runtime.runner import RunnerError, parse_runner_output, raise_for_result, run_local


def _run(bundle, pte, inputs=(), **kw):
    """Run without raising; the result keeps the exit code and the error line."""
    return run_local(bundle.path, pte, inputs, warmup=0, iterations=1, check=False, **kw)


def _error(res, stage, code, name):
    assert res.exit_code == code, (res.exit_code, res.error, res.stderr[-500:])
    assert res.error.stage == stage and res.error.error == name, res.error
    assert [ln["type"] for ln in res.lines][0] == "header" and res.lines[-1]["type"] == "error"
    with pytest.raises(RunnerError) as exc:
        raise_for_result(res)
    assert exc.value.exit_code == code
    return res.error


def test_missing_program(host_bundle, tmp_path):
    err = _error(_run(host_bundle, tmp_path / "nope.pte"), "load", 10, "AccessFailed")
    assert "nope.pte" in err.message


def test_corrupted_program(host_bundle, artifacts, tmp_path):
    data = bytearray((artifacts["fp32"] / "model.pte").read_bytes())
    for i in range(8, min(len(data), 4096), 7):  # scramble the flatbuffer's tables, keep the size
        data[i] ^= 0x5A
    bad = tmp_path / "corrupt.pte"
    bad.write_bytes(bytes(data))
    res = _run(host_bundle, bad)
    assert res.error and res.error.error in ("InvalidProgram", "InvalidArgument", "NotSupported"), res.error
    err = _error(res, "load", 10, res.error.error)
    assert "corrupt.pte" in err.message


def test_truncated_program(host_bundle, artifacts, tmp_path):
    data = (artifacts["fp32"] / "model.pte").read_bytes()
    bad = tmp_path / "truncated.pte"
    bad.write_bytes(data[: len(data) // 3])
    res = _run(host_bundle, bad)
    assert res.exit_code == 10 and res.error.stage == "load", res.error
    assert res.error.error in ("InvalidProgram", "InvalidArgument", "InvalidExternalData")


def test_program_from_an_incompatible_executorch(host_bundle, artifacts, tmp_path):
    """The .pte's file identifier (bytes 4-8, e.g. ET12) is its schema version: a program written
    by an ExecuTorch with another schema is refused at load, and the log says which."""
    data = bytearray((artifacts["fp32"] / "model.pte").read_bytes())
    current = bytes(data[4:8]).decode()
    data[4:8] = b"ET99"
    bad = tmp_path / "future.pte"
    bad.write_bytes(bytes(data))
    err = _error(_run(host_bundle, bad), "load", 10, "InvalidProgram")
    assert "incompatible ExecuTorch version" in err.message
    assert any("ET99" in line and current in line for line in err.log), err.log


def test_not_a_program_at_all(host_bundle, tmp_path):
    bad = tmp_path / "text.pte"
    bad.write_text("this is not an ExecuTorch program\n" * 10)
    err = _error(_run(host_bundle, bad), "load", 10, "InvalidProgram")
    assert "not a valid .pte" in err.message


def test_wrong_input_count(host_bundle, two_input_artifact):
    first = vector_inputs(two_input_artifact)[:1]
    err = _error(_run(host_bundle, two_input_artifact / "model.pte", first), "input", 11, "InvalidArgument")
    assert "takes 2 input(s), 1 --input given" in err.message


def test_wrong_input_shape(host_bundle, artifacts, tmp_path):
    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.zeros((1, 3, 8, 8), dtype=np.float32))
    err = _error(_run(host_bundle, artifacts["fp32"] / "model.pte", [wrong]), "input", 11, "InvalidArgument")
    assert "[1,3,8,8]" in err.message and "[1,3,16,16]" in err.message


def test_wrong_input_dtype(host_bundle, artifacts, tmp_path):
    wrong = tmp_path / "wrong_dtype.npy"
    np.save(wrong, np.zeros((1, 3, 16, 16), dtype=np.float64))
    err = _error(_run(host_bundle, artifacts["fp32"] / "model.pte", [wrong]), "input", 11, "InvalidArgument")
    assert "float64" in err.message and "float32" in err.message


def test_raw_input_of_the_wrong_size(host_bundle, artifacts, tmp_path):
    raw = tmp_path / "short.bin"
    raw.write_bytes(b"\0" * 100)
    err = _error(_run(host_bundle, artifacts["fp32"] / "model.pte", [raw]), "input", 11, "InvalidArgument")
    assert "100 bytes" in err.message and "3072 bytes" in err.message


def test_truncated_npy_input(host_bundle, artifacts, tmp_path):
    (good,) = vector_inputs(artifacts["fp32"])
    bad = tmp_path / "cut.npy"
    bad.write_bytes(good.read_bytes()[:-16])
    err = _error(_run(host_bundle, artifacts["fp32"] / "model.pte", [bad]), "input", 11, "InvalidArgument")
    assert "truncated" in err.message


def test_missing_input_file(host_bundle, artifacts, tmp_path):
    err = _error(_run(host_bundle, artifacts["fp32"] / "model.pte", [tmp_path / "absent.npy"]),
                 "input", 11, "AccessFailed")
    assert "absent.npy" in err.message


def test_unwritable_output_dir(host_bundle, artifacts, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    res = run_local(host_bundle.path, artifacts["fp32"] / "model.pte", iterations=1, check=False,
                    etdump_path=blocker / "x.etdp")
    _error(res, "output", 13, "AccessFailed")


def test_missing_operator_at_the_runner(slim_bundle, artifacts):
    """The slim runner has no optimized kernels: the portable program's convolution is missing.
    (Pre-flight would refuse this; run_local is called directly to see the runner's own answer.)"""
    err = _error(_run(slim_bundle, artifacts["portable"] / "model.pte"), "load", 10, "OperatorMissing")
    assert any("aten::convolution.out" in line for line in err.log), err.log


def test_usage_error(host_bundle):
    argv = [str(host_bundle.path / "edgerun-runner"), "--model", "x.pte", "--iterations", "zero"]
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    res = parse_runner_output(proc.stdout, exit_code=proc.returncode, stderr=proc.stderr)
    assert res.exit_code == 2 and res.error.stage == "usage" and "--iterations" in res.error.message


def test_garbled_or_cut_output_is_not_taken_for_a_run(host_bundle, artifacts):
    """Real runner output, then what a broken transport would deliver."""
    ok = run_local(host_bundle.path, artifacts["fp32"] / "model.pte", warmup=0, iterations=3)
    text = "\n".join(json.dumps(ln) for ln in ok.lines)
    cut = parse_runner_output(text.rsplit("\n", 2)[0], exit_code=137)  # killed: no summary
    with pytest.raises(RunnerError, match="killed by signal 9") as exc:
        raise_for_result(cut)
    assert exc.value.exit_code == 14
    noisy = parse_runner_output(text + "\nSegmentation fault\n", exit_code=0)
    assert not noisy.ok and "not JSON" in noisy.protocol_problems[0]
    other = parse_runner_output(text.replace('"protocol": 1', '"protocol": 2'), exit_code=0)
    assert not other.ok and "protocol 2" in other.protocol_problems[0]


# ------------------------------------------------------------------------------ pre-flight


def test_preflight_passes_matching_programs(host_bundle, slim_bundle, artifacts):
    for kind in ("fp32", "int8", "portable"):
        assert preflight(manifest_of(artifacts[kind]), host_bundle).ok
    # fully delegated programs run on the slim bundle
    assert preflight(manifest_of(artifacts["fp32"]), slim_bundle).ok


def test_preflight_names_the_missing_operator(slim_bundle, artifacts):
    manifest = manifest_of(artifacts["portable"])
    report = preflight(manifest, slim_bundle)
    assert "aten::convolution.out" in report.missing_operators
    with pytest.raises(PreflightError, match=r"missing operator\(s\): .*aten::convolution\.out") as exc:
        check_compatible(manifest, slim_bundle)
    assert exc.value.exit_code == 9 and "--variant full" in exc.value.hint


def test_preflight_refuses_a_version_mismatch(host_bundle, artifacts):
    base = manifest_of(artifacts["fp32"])
    manifest = replace(base, versions={**base.versions, "executorch": "0.7.0"})
    with pytest.raises(PreflightError, match=r"version mismatch: .*executorch 0\.7\.0.*executorch "
                                             + host_bundle.executorch_version.replace(".", r"\.")):
        check_compatible(manifest, host_bundle)


def test_preflight_refuses_missing_backend_and_warns_on_another_arch(host_bundle, aarch64_bundle, artifacts):
    base = manifest_of(artifacts["fp32"])
    manifest = replace(base, operators=replace(base.operators, delegated={**base.operators.delegated, "QnnBackend": 2}))
    report = preflight(manifest, host_bundle)
    assert report.missing_backends == ["QnnBackend"] and not report.ok
    x86 = manifest_of(artifacts["fp32"])  # exported for the x86_64 host target
    other_arch = preflight(x86, aarch64_bundle)  # programs are portable: runs, with a warning about timings
    assert other_arch.ok and any("exported for host (x86_64)" in w for w in other_arch.warnings)
    assert preflight(manifest_of(artifacts["portable"]), aarch64_bundle).ok  # portable: any arch


def test_preflight_warns_on_a_failed_artifact(host_bundle, artifacts):
    manifest = replace(manifest_of(artifacts["fp32"]), status="failed")
    report = preflight(manifest, host_bundle)
    assert report.ok and any("failed its numeric verification" in w for w in report.warnings)


def test_run_command_exits_with_the_runner_code(cli, host_bundle, artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifacts["fp32"], art)
    (inp,) = vector_inputs(art)
    np.save(inp, np.zeros((2, 3, 16, 16), dtype=np.float32))  # the vector no longer fits the program
    proc = cli("run", str(art), "--bundle", str(host_bundle.path), "--json")
    assert proc.returncode == 11, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["error"]["type"] == "RunnerError"
    assert out["error"]["runner"]["error"]["error"] == "InvalidArgument"
    assert "[2,3,16,16]" in out["error"]["message"]


def test_timeout_kills_the_runner_and_keeps_what_it_said(host_bundle, artifacts):
    from edgerun.runtime.runner import RunOptions

    opts = RunOptions(warmup=0, iterations=1, min_time_ms=600_000)  # would run for ten minutes
    with pytest.raises(RunnerError, match="did not finish within 2 s") as exc:
        run_local(host_bundle.path, artifacts["portable"] / "model.pte", options=opts, timeout=2)
    assert exc.value.exit_code == 14
    partial = exc.value.result
    assert partial.header is not None and partial.summary is None and len(partial.execute_ns) > 0
