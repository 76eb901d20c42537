"""The real ``edgerun`` entry point: --json prints exactly one object, errors are one paragraph
with a non-zero exit, --debug adds the traceback."""

import json

import pytest


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, edgerun_home):
    """One ``edgerun export --json`` of the tiny model for rpi5 int8, its stdout and stderr both piped: what
    --json prints on stdout and the progress lines on stderr come from the same run (the progress does not
    depend on --json), so the two tests below share it instead of exporting twice. ``(result, out dir)``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("cli-export") / "a"
    exe = Path(sys.executable).with_name("edgerun")   # the installed entry point, as the ``cli`` fixture runs it
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgerun.cli import main; main()"]
    r = subprocess.run([*cmd, "export", "factories:tiny", "--target", "rpi5", "--scheme", "int8", "-o", str(out),
                        "--json"], check=False, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "EDGERUN_HOME": str(edgerun_home)})   # a module fixture: the session's home
    return r, out


def test_export_json_prints_exactly_one_object(int8_export):
    r, out = int8_export
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert obj["ok"] is True and obj["path"] == str(out)
    assert obj["manifest"]["status"] == "ok"


def test_inspect_shows_the_manifest(cli, tmp_path, make_artifact):
    art = make_artifact("factories:tiny", "rpi5", "int8")
    r = cli("inspect", str(art))
    assert r.returncode == 0, r.stderr
    assert "XnnpackBackend" in r.stdout and "planned memory" in r.stdout and "SNR" in r.stdout
    r = cli("inspect", str(art), "--json")
    assert json.loads(r.stdout)["manifest"]["scheme"]["name"] == "int8"


def test_models_and_targets_list_the_registries(cli):
    models = json.loads(cli("models", "--json").stdout)["models"]
    assert {"mobilenet_v2", "digits_cnn", "text_encoder"} <= {m["name"] for m in models}
    targets = json.loads(cli("targets", "--json").stdout)["targets"]
    assert {"host", "rpi4", "rpi5", "jetson-orin", "android-arm64", "portable"} <= {t["name"] for t in targets}


def test_unknown_names_exit_2_with_the_known_ones(cli, tmp_path):
    r = cli("export", "mobilenet_v9", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown model 'mobilenet_v9'" in r.stderr and "mobilenet_v2" in r.stderr
    r = cli("export", "factories:tiny", "--target", "portable", "--scheme", "int8", "--json")
    assert r.returncode == 2
    err = json.loads(r.stdout)["error"]
    assert err["stage"] == "arguments" and "fp32" in err["hint"]
    assert not (tmp_path / "x").exists()


def test_error_is_one_paragraph_and_debug_adds_the_traceback(cli, tmp_path):
    r = cli("export", "factories:branchy", "-o", str(tmp_path / "b"))
    assert r.returncode == 3
    assert "export failed:" in r.stderr and "Traceback" not in r.stderr
    r = cli("export", "factories:branchy", "-o", str(tmp_path / "b"), "--debug")
    assert r.returncode == 3 and "Traceback" in r.stderr


def test_failed_verification_exits_4_and_keeps_the_artifact(cli, tmp_path):
    out = tmp_path / "strict"
    r = cli("export", "factories:tiny", "--scheme", "int8", "-o", str(out), "--min-snr-db", "400", "--json")
    assert r.returncode == 4
    err = json.loads(r.stdout)["error"]
    assert err["stage"] == "verify" and "output 0: SNR" in err["message"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_progress_lines_per_stage_also_when_stderr_is_a_pipe(int8_export):
    r, _ = int8_export
    assert r.returncode == 0, r.stderr
    import re

    stages = re.findall(r"^export: ([a-z ]+) … \d+\.\d s$", r.stderr, re.M)
    assert stages[-5:] == ["export", "quantize", "lower", "write", "verify"], r.stderr


def test_vectors_option_takes_a_count_or_a_file(cli, tmp_path):
    r = cli("export", "factories:tiny", "-o", str(tmp_path / "v"), "--vectors", "inputs.txt", "--json")
    assert r.returncode == 2 and "neither a number of test vectors nor a .npy/.npz file" in r.stdout
