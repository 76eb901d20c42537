"""Issue 9 item 5: a device URI ran a local command.

``local://?wrapper=sh -c '...'`` on the command line executed its wrapper on the next exec, and an
ssh host or adb serial starting with ``-`` reached the client program as an *option*
(``ssh -oProxyCommand=...``). A wrapper is now accepted only from an inventory file (which the
user wrote), never from a URI; hosts, users and serials starting with ``-`` are refused, and the
ssh destination always follows ``--``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.devices import InventoryError, get_spec, load_inventory, make_device, parse_uri, resolve_device

EDGERUN = str(Path(sys.executable).parent / "edgerun")


def test_a_wrapper_in_a_uri_never_runs(tmp_path):
    """Stops: ``--device 'local://?wrapper=touch PWNED'`` running ``touch`` on this machine."""
    pwned = tmp_path / "PWNED"
    with pytest.raises(InventoryError) as ei:
        with resolve_device(f"local://?work_dir={tmp_path}/wd&wrapper=touch%20{pwned}") as dev:
            dev.exec(["true"], timeout=10)
    assert "wrapper" in ei.value.message and "inventory" in ei.value.message
    assert not pwned.exists()


def test_a_wrapper_in_a_uri_is_refused_by_the_cli_with_exit_2(tmp_path):
    pwned = tmp_path / "PWNED"
    proc = subprocess.run([EDGERUN, "devices", "probe", f"local://?wrapper=sh -c 'touch {pwned}'", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"]["type"] == "InventoryError"
    assert not pwned.exists()


def test_env_in_a_uri_is_refused_too():
    """Stops: ``?env=...`` setting LD_PRELOAD for the device's programs from a command line."""
    with pytest.raises(ValueError, match="not accepted in a device URI"):
        parse_uri("local://?env=LD_PRELOAD")


def test_a_wrapper_from_the_inventory_file_is_honoured(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.nice]\nuri = "local://"\nwork_dir = "{tmp_path}/wd"\nwrapper = "env EDGERUN_W=1"\n')
    with make_device(load_inventory(inv)["nice"]) as dev:
        assert dev.exec(["sh", "-c", "echo $EDGERUN_W"], timeout=10).stdout == b"1\n"


@pytest.mark.parametrize("uri", [
    "ssh://-oProxyCommand=touch%20x",          # a host that is an option
    "ssh://-oProxyCommand=x@host",             # a user that is an option (-l takes it, but never trust)
    "adb://-H",                                # a serial that is an option of adb
])
def test_hosts_users_and_serials_starting_with_a_dash_are_refused(uri):
    """Stops: a host/serial being parsed by ssh/adb as one of their own options."""
    with pytest.raises(InventoryError, match="starts with '-'"):
        get_spec(uri)


def test_the_ssh_destination_always_follows_a_double_dash():
    """Whatever the host, ssh stops reading options before it (belt and braces to the check above)."""
    dev = resolve_device("ssh://pi@pi5.lan:2222")
    argv = dev._client_argv("true")
    assert argv[argv.index("pi5.lan") - 1] == "--"
