"""Issue 9, unsafe cases 1 and 7: a hostile artifact must not make edgerun read, push or run files
outside it, nor run (and store timings of) a program other than the one its manifest describes.

Real CLI, real local device (a directory standing in for the device's file system).
"""

from __future__ import annotations

import json
import os

import pytest
from manifests import write_artifact


def _deploy(cli, art, dev):
    return cli("deploy", str(art), "--device", f"local://?work_dir={dev}", "--json")


def _pushed_anything(dev) -> bool:
    return dev.exists() and any(p.is_file() for p in dev.rglob("*"))


@pytest.mark.parametrize("field", ["test vector input", "program", "dataset inputs"])
@pytest.mark.parametrize("path", ["absolute", "dotdot"])
def test_manifest_paths_outside_the_artifact_are_never_pushed(cli, tmp_path, field, path):
    """Attack: ``test_vectors[].inputs``/``files.pte``/``dataset.inputs`` naming ``/…/secret.txt`` or
    ``../../secret.txt`` made ``edgerun deploy`` push that local file to the device (exit 0)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's private key")
    art = tmp_path / "a" / "b" / "art"
    target = str(secret) if path == "absolute" else os.path.relpath(secret, art)
    change = {"test vector input": {"test_vectors": [{"inputs": [target], "outputs": ["vectors/000/output_0.npy"]}]},
              "program": {"files": {"pte": target}},
              "dataset inputs": {"dataset": {"name": "d", "split": "test", "inputs": target, "labels": "l.npy",
                                             "samples": 1}}}[field]
    write_artifact(art, **change)
    proc = _deploy(cli, art, tmp_path / "dev")
    assert proc.returncode == 9, proc.stdout + proc.stderr[-1500:]
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "ArtifactError" and ("absolute" in err["message"] or "leaves the artifact" in err["message"])
    assert not _pushed_anything(tmp_path / "dev")


def test_a_link_inside_the_artifact_to_a_file_outside_is_never_pushed(cli, tmp_path):
    """Attack: a test-vector file that is a symbolic link to a private file outside the artifact."""
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    art = tmp_path / "art"
    write_artifact(art)
    (art / "vectors/000/input_0.npy").unlink()
    (art / "vectors/000/input_0.npy").symlink_to(secret)
    proc = _deploy(cli, art, tmp_path / "dev")
    assert proc.returncode == 9 and "outside the artifact" in json.loads(proc.stdout)["error"]["message"]
    assert not any(p.read_bytes() == b"private" for p in (tmp_path / "dev").rglob("*") if p.is_file())


def test_a_swapped_program_is_refused_before_it_is_pushed_or_run(cli, tmp_path):
    """Attack (case 7): a 4.8 kB program under a 47 kB manifest ran, and its timings were stored as the
    artifact's model with the manifest's sizes. The .pte must match pte_sha256 before anything is sent."""
    art = tmp_path / "art"
    write_artifact(art, pte=b"x" * 4700)
    (art / "model.pte").write_bytes(b"y" * 480)
    for args in (["deploy", str(art), "--device", f"local://?work_dir={tmp_path / 'dev'}"],
                 ["profile", str(art), "--device", f"local://?work_dir={tmp_path / 'dev'}",
                  "--store", str(tmp_path / "s.sqlite")],
                 ["run", str(art), "--device", f"local://?work_dir={tmp_path / 'dev'}"]):
        proc = cli(*args, "--json")
        assert proc.returncode == 9, (args[0], proc.stdout, proc.stderr[-1500:])
        assert "does not match the manifest" in json.loads(proc.stdout)["error"]["message"]
    assert not _pushed_anything(tmp_path / "dev")
    assert not (tmp_path / "s.sqlite").exists() or b"r-" not in (tmp_path / "s.sqlite").read_bytes()
