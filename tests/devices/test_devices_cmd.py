"""``edgerun devices list|probe``: the real CLI in a subprocess, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGERUN = [str(Path(sys.executable).parent / "edgerun")]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(EDGERUN + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def inventory(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.emu]\nuri = "qemu-aarch64://"\ntarget = "rpi4"\nwork_dir = "{tmp_path}/emu"\n')
    return inv


def test_list_shows_inventory_and_implicit_local(inventory):
    proc = run("devices", "list", "--json", env={"EDGERUN_DEVICES": str(inventory)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    names = {d["name"]: d for d in result["devices"]}
    assert set(names) == {"local", "emu"}
    assert names["emu"]["cpu"] == "cortex-a72" and names["emu"]["target"] == "rpi4"
    assert result["inventory"] == str(inventory)


def test_probe_by_name_reports_emulation(inventory):
    proc = run("devices", "probe", "emu", "--inventory", str(inventory), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)["info"]
    assert info["arch"] == "aarch64" and info["emulated"] is True and info["cpu_model"] == "cortex-a72"


def test_probe_by_uri_without_inventory(tmp_path):
    proc = run("devices", "probe", f"local://?work_dir={tmp_path}/wd", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)["info"]
    assert info["arch"] == os.uname().machine and info["cores"] == os.cpu_count()


def test_probe_human_output_names_the_device(tmp_path):
    proc = run("devices", "probe", f"local://?work_dir={tmp_path}/wd")
    assert proc.returncode == 0 and "arch" in proc.stdout and os.uname().machine in proc.stdout


def test_unknown_device_is_a_usage_error(inventory):
    proc = run("devices", "probe", "jetson", "--inventory", str(inventory), "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert err["stage"] == "inventory" and "jetson" in err["message"]


def test_unreachable_ssh_device_fails_at_connect_with_its_name(tmp_path):
    from edgerun_tests_devices_sshd import free_port  # loaded by conftest

    port = free_port()  # nothing listens there
    proc = run("devices", "probe", f"ssh://127.0.0.1:{port}?connect_retries=0&connect_timeout=3", "--json")
    assert proc.returncode == 8, proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "DeviceUnreachable" and err["stage"] == "connect"
    assert f"127.0.0.1:{port}" in err["message"]


def test_probe_an_ssh_inventory_entry(sshd, tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(f"""
[devices.fakepi]
uri = "ssh://{sshd.user}@127.0.0.1:{sshd.port}"
identity_file = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
work_dir = "{tmp_path}/remote"
wrapper = "qemu-aarch64 -cpu cortex-a72"
target = "rpi4"
""")
    proc = run("devices", "probe", "fakepi", "--inventory", str(inv), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["device"] == "fakepi" and out["target"] == "rpi4"
    info = out["info"]
    assert (info["arch"], info["cpu_model"], info["emulated"], info["transport"]) == \
        ("aarch64", "cortex-a72", True, "ssh")
    assert info["free_bytes"] > 0 and info["kernel"] == os.uname().release


def test_probe_with_an_untrusted_host_key_exits_nonzero_naming_the_device(sshd, tmp_path):
    empty = tmp_path / "kh"
    empty.write_text("")
    uri = sshd.uri(known_hosts=str(empty), connect_retries="0")
    proc = run("devices", "probe", uri, "--json")
    assert proc.returncode == 8
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "DeviceAuthError" and err["stage"] == "connect"
    assert f"127.0.0.1:{sshd.port}" in err["device"] and err["hint"]
