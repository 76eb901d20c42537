"""export_model end to end on a small user model: every legal (target, scheme) pair, the
artifact contract, verification that can fail, and every bad input the issue names."""

import json
import os
import shutil

import numpy as np
import pytest

from edgerun.export import ExportError, VerificationFailed, export_model, legal_pairs, read_manifest
from edgerun.export.pipeline import ExportOptions, Thresholds, verify_artifact
from edgerun.export.schemes import make_scheme


def _pairs_in_this_venv():
    """Legal pairs whose export runs in edgerun's own venv; the Arm targets' (another environment, Vela, no host
    run) are exported by tests/export/test_arm.py."""
    from edgerun.export import TARGETS

    return [(t, s) for t, s in legal_pairs() if TARGETS[t].toolchain is None]


@pytest.mark.parametrize("target,scheme", _pairs_in_this_venv())
def test_every_legal_pair_exports_and_verifies(make_artifact, target, scheme):
    art = make_artifact("factories:tiny", target, scheme)
    m = read_manifest(art).to_json()
    assert m["status"] == "ok" and m["verification"]["passed"]
    assert m["target"]["name"] == target and m["scheme"]["name"] == scheme
    assert (art / "model.pte").stat().st_size == m["pte_bytes"] > 0
    assert (art / "model.etrecord").is_file()
    ops = m["operators"]
    if target == "portable":
        assert not ops["delegated"] and "aten::convolution.out" in ops["non_delegated"]
    else:
        assert ops["delegated"].get("XnnpackBackend", 0) >= 1


def test_manifest_has_every_field_the_contract_promises(make_artifact):
    m = read_manifest(make_artifact("factories:tiny", "rpi5", "int8")).to_json()
    for key in ("schema_version", "status", "model", "target", "scheme", "recipe_hash", "versions", "inputs",
                "outputs", "files", "pte_bytes", "planned_memory_bytes", "operators", "verification",
                "test_vectors", "export_seconds", "calibration"):
        assert key in m, key
    assert m["versions"]["executorch"] == "1.5.1" and m["versions"]["torch"].startswith("2.14.1")
    assert m["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert m["outputs"][0]["shape"] == [1, 10]
    assert m["planned_memory_bytes"] > 0
    assert m["scheme"]["recipe_hash"] == make_scheme("int8").recipe_hash
    assert m["calibration"] == {"source": "generated", "samples": 16}
    assert len(m["test_vectors"]) == 4


def test_quantization_shrinks_the_program(make_artifact):
    fp32 = read_manifest(make_artifact("factories:tiny", "rpi5", "fp32")).to_json()["pte_bytes"]
    int8 = read_manifest(make_artifact("factories:tiny", "rpi5", "int8")).to_json()["pte_bytes"]
    w4 = read_manifest(make_artifact("factories:tiny", "rpi5", "8da4w")).to_json()["pte_bytes"]
    assert int8 < 0.4 * fp32 and w4 < int8


def test_multiple_inputs_and_outputs_are_described_and_verified(make_artifact):
    art = make_artifact("factories:two_in_two_out", "host", "fp32")
    m = read_manifest(art).to_json()
    assert [i["name"] for i in m["inputs"]] == ["a", "b"]
    assert [o["shape"] for o in m["outputs"]] == [[1, 4], [1]]
    assert len(m["verification"]["outputs"]) == 2
    vec = m["test_vectors"][1]
    assert len(vec["inputs"]) == 2 and all((art / p).is_file() for p in vec["inputs"] + vec["outputs"])


def test_verification_catches_a_wrong_reference(make_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(make_artifact("factories:tiny", "host", "fp32"), art)
    m = read_manifest(art)
    ref = art / m.test_vectors[2].outputs[0]
    np.save(ref, np.load(ref) + 0.5)  # a deliberately wrong eager reference
    result = verify_artifact(art, m, Thresholds.for_scheme(make_scheme("fp32")))
    assert not result.passed
    assert any(f.startswith("output 0: SNR") for f in result.failures)
    # and the untouched artifact passes the same check
    clean = make_artifact("factories:tiny", "host", "fp32")
    assert verify_artifact(clean, read_manifest(clean), Thresholds.for_scheme(make_scheme("fp32"))).passed


def test_failed_verification_keeps_the_artifact_marked_failed(tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(VerificationFailed) as info:
        export_model("factories:tiny", "host", "int8", out, thresholds={"min_snr_db": 500.0})
    assert "output 0" in info.value.message and info.value.exit_code == 4
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["verification"]["failures"]


def _no_partials(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("factory,stage,fragment", [
    ("factories:branchy", "export", "torch.cond"),
    ("factories:not_a_pair", "load model", "expected a pair"),
    ("factories:wrong_model_type", "load model", "expected a torch.nn.Module"),
    ("factories:raises", "load model", "factory exploded on purpose"),
    ("factories:NOT_CALLABLE", "load model", "is not callable"),
    ("factories:missing_attr", "load model", "has no attribute"),
    ("no_such_module_xyz:make", "load model", "cannot import module"),
])
def test_bad_models_fail_at_the_named_stage_and_leave_nothing(tmp_path, factory, stage, fragment):
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        export_model(factory, "host", "fp32", out)
    assert info.value.stage == stage
    assert fragment in info.value.paragraph()
    assert not out.exists() and not _no_partials(tmp_path)


def test_calibration_file_of_the_wrong_shape_is_refused(tmp_path):
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((5, 3, 4, 4), np.float32))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        export_model("factories:tiny", "host", "int8", out, options=ExportOptions(calibration=str(bad)))
    assert info.value.stage == "quantize"
    assert "calib.npy" in info.value.message and "[N, 1, 3, 8, 8]" in info.value.message
    assert not out.exists() and not _no_partials(tmp_path)


def test_calibration_file_is_used(tmp_path):
    good = tmp_path / "calib.npy"
    np.save(good, np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32))
    m = export_model("factories:tiny", "host", "int8", tmp_path / "out", options=ExportOptions(calibration=str(good)))
    assert m.to_json()["calibration"] == {"source": f"file:{good}", "samples": 6}


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError) as info:
        export_model("factories:tiny", "host", "fp32", blocker / "out")
    assert info.value.stage == "write" and "a-file" in info.value.message


def test_never_overwrites_a_directory_that_is_not_an_artifact(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not lose me")
    with pytest.raises(ExportError, match="not an edgerun artifact"):
        export_model("factories:tiny", "host", "fp32", precious)
    assert (precious / "thesis.tex").read_text() == "do not lose me"


def test_reexport_replaces_an_artifact_atomically(tmp_path):
    out = tmp_path / "art"
    first = export_model("factories:tiny", "host", "fp32", out)
    second = export_model("factories:tiny", "host", "int8", out)
    assert read_manifest(out).scheme.name == "int8" != first.scheme.name
    assert str(second.path) == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_export_killed_mid_way_leaves_nothing_the_next_export_keeps(tmp_path):
    """Issue 9 item 14: a killed export left hidden .partial-* directories forever."""
    import subprocess
    import sys

    out = tmp_path / "art"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its directories are stale
    stale = [tmp_path / f".art.partial-{dead_pid}-abc123", tmp_path / f".art.old-{dead_pid}"]
    live = tmp_path / f".art.partial-{os.getpid()}-live"  # an export still running (this process)
    for d in (*stale, live):
        d.mkdir()
        (d / "model.pte").write_bytes(b"half")
    export_model("factories:tiny", "host", "fp32", out)
    assert not any(d.exists() for d in stale) and live.exists()
    assert (out / "manifest.json").is_file()
