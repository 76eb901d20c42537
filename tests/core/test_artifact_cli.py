"""Every command that reads an artifact refuses a newer manifest schema the same way: one reader."""

from __future__ import annotations

import json

import pytest
from manifests import write_artifact

from edgerun.core.artifact import SCHEMA_VERSION

COMMANDS = {
    "inspect": ["inspect", "{art}"],
    "run --bundle": ["run", "{art}", "--bundle", "{tmp}/no-bundle"],
    "run --device": ["run", "{art}", "--device", "local://?work_dir={tmp}/dev"],
    "deploy": ["deploy", "{art}", "--device", "local://?work_dir={tmp}/dev"],
    "profile": ["profile", "{art}", "--device", "local://?work_dir={tmp}/dev"],
}


@pytest.fixture(scope="module")
def future_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("future")
    write_artifact(tmp / "art", schema_version=99)
    return tmp


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_newer_schema_is_refused_by_every_command_alike(cli, future_artifact, name):
    tmp = future_artifact
    args = [a.format(art=tmp / "art", tmp=tmp) for a in COMMANDS[name]]
    proc = cli(*args, "--json")
    assert proc.returncode == 9, (name, proc.stdout, proc.stderr[-1500:])
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "ArtifactError" and err["stage"] == "read artifact"
    assert err["message"] == (f"manifest {tmp / 'art' / 'manifest.json'} has manifest schema version 99; "
                              f"this edgerun reads up to {SCHEMA_VERSION}.")
    assert not (tmp / "dev").exists(), f"{name} touched the device before reading the artifact"
