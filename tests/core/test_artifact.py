"""The typed manifest: one reader that refuses what it cannot trust, with one message and one code."""

from __future__ import annotations

import json
import os

import pytest
from manifests import write_artifact

from edgerun.core.artifact import SCHEMA_VERSION, Manifest, read_manifest, write_manifest
from edgerun.core.errors import ArtifactError, ExitCode


def test_round_trip_through_json(tmp_path):
    write_artifact(tmp_path / "a", vectors=2)
    m = read_manifest(tmp_path / "a")
    assert isinstance(m, Manifest) and m.model.name == "tiny" and m.inputs[0].shape == (1, 2)
    write_manifest(tmp_path / "a", m)
    again = read_manifest(tmp_path / "a")
    assert again == m and again.to_json() == m.to_json()
    assert [v.outputs[0].shape for v in again.load_test_vectors()] == [(1, 3), (1, 3)]


@pytest.mark.parametrize("change,words", [
    ({"schema_version": SCHEMA_VERSION + 1}, f"schema version {SCHEMA_VERSION + 1}; this edgerun reads up to"),
    ({"schema": "someone.else"}, "is not an edgerun artifact manifest"),
    ({"schema_version": "1"}, "no valid schema_version"),
    ({"pte_bytes": "big"}, "manifest.pte_bytes must be int"),
    ({"inputs": [{"name": "x", "shape": [1, -2], "dtype": "float32"}]}, "inputs[0].shape must be a list of sizes"),
    ({"pte_sha256": "abc"}, "pte_sha256 must be 64"),
    ({"files": {"etrecord": "model.etrecord"}}, "files.pte is missing"),
])
def test_bad_manifests_are_refused_naming_the_field(tmp_path, change, words):
    write_artifact(tmp_path, **change)
    with pytest.raises(ArtifactError) as info:
        read_manifest(tmp_path)
    assert words in info.value.message and str(tmp_path / "manifest.json") in info.value.message
    assert info.value.exit_code == ExitCode.PREFLIGHT


def test_not_an_artifact_and_unreadable_json(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="cannot read manifest"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("where", ["test_vectors", "files", "dataset"])
@pytest.mark.parametrize("path", ["/etc/passwd", "../../secret.txt", "vectors/../../x.npy", "~/.ssh/id_rsa"])
def test_paths_that_leave_the_artifact_are_refused(tmp_path, where, path):
    """Attack: a manifest naming a path outside its artifact makes deploy push that file to a device."""
    if where == "test_vectors":
        change = {"test_vectors": [{"inputs": [path], "outputs": ["vectors/000/output_0.npy"]}]}
    elif where == "files":
        change = {"files": {"pte": path}}
    else:
        change = {"dataset": {"name": "d", "split": "test", "inputs": path, "labels": "l.npy", "samples": 1}}
    write_artifact(tmp_path / "art", **change)
    with pytest.raises(ArtifactError, match="absolute|leaves the artifact"):
        read_manifest(tmp_path / "art")


def test_a_symlink_out_of_the_artifact_is_refused(tmp_path):
    """Attack: a relative path that is a symbolic link to a file outside the artifact."""
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    write_artifact(tmp_path / "art")
    (tmp_path / "art" / "vectors" / "000" / "input_0.npy").unlink()
    os.symlink(secret, tmp_path / "art" / "vectors" / "000" / "input_0.npy")
    m = read_manifest(tmp_path / "art")
    with pytest.raises(ArtifactError, match="outside the artifact"):
        m.vector_input_paths(0)


def test_a_swapped_program_is_refused_before_use(tmp_path):
    """Attack: replace model.pte after export; its timings would be stored as the artifact's model."""
    write_artifact(tmp_path, pte=b"the exported program")
    m = read_manifest(tmp_path)
    assert m.verified_pte() == (tmp_path / "model.pte").resolve()
    (tmp_path / "model.pte").write_bytes(b"another program, same size!!")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        m.verified_pte()
    (tmp_path / "model.pte").write_bytes(b"the exported progran")  # same size, other bytes
    with pytest.raises(ArtifactError, match="altered or replaced"):
        m.verified_pte()


def test_an_external_data_file_is_checked_like_the_program(tmp_path):
    """A program whose weights live partly in a .ptd: the manifest names it with its size and sha256,
    a swapped one is refused, and the program's size is both files."""
    import hashlib
    data = b"tied embedding and head, once"
    (tmp_path / "model.ptd").write_bytes(data)
    d = write_artifact(tmp_path, pte=b"the exported program",
                       files={"pte": "model.pte", "data": "model.ptd"}, data_bytes=len(data),
                       data_sha256=hashlib.sha256(data).hexdigest())
    m = read_manifest(tmp_path)
    assert m.verified_data() == (tmp_path / "model.ptd").resolve()
    assert m.program_bytes == d["pte_bytes"] + len(data)
    assert read_manifest(tmp_path).to_json()["data_sha256"] == d["data_sha256"]
    (tmp_path / "model.ptd").write_bytes(data[::-1])
    with pytest.raises(ArtifactError, match="program data file model.ptd .* altered or replaced"):
        m.verified_data()
    write_artifact(tmp_path / "plain")
    plain = read_manifest(tmp_path / "plain")
    assert plain.verified_data() is None and plain.program_bytes == plain.pte_bytes
    assert "data_sha256" not in plain.to_json()


@pytest.mark.parametrize("change", [
    {"files": {"pte": "model.pte", "data": "model.ptd"}},                       # named, no hash
    {"data_bytes": 4, "data_sha256": "a" * 64},                                  # hashed, not named
    {"files": {"pte": "model.pte", "data": "model.ptd"}, "data_bytes": 4, "data_sha256": "xyz"},
])
def test_a_half_described_data_file_is_refused(tmp_path, change):
    write_artifact(tmp_path, **change)
    with pytest.raises(ArtifactError, match="data"):
        read_manifest(tmp_path)


def test_missing_vector_file_names_it(tmp_path):
    write_artifact(tmp_path)
    (tmp_path / "vectors" / "000" / "input_0.npy").unlink()
    with pytest.raises(ArtifactError, match="test vector 0 input 'vectors/000/input_0.npy'.*missing"):
        read_manifest(tmp_path).load_test_vector(0)


def test_an_older_manifest_without_new_fields_still_reads(tmp_path):
    d = write_artifact(tmp_path)
    for key in ("recipe", "planned_buffers", "method", "calibration"):
        d.pop(key, None)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    m = read_manifest(tmp_path)
    assert m.recipe is None and m.method == "forward"
