"""Device URIs and the TOML inventory map 1:1 onto DeviceSpec; bad entries name file and entry."""

from __future__ import annotations

import pytest

from edgerun.devices import InventoryError, get_spec, load_inventory, parse_uri, resolve_device
from edgerun.devices.local import LocalDevice
from edgerun.devices.qemu import QemuDevice
from edgerun.devices.ssh import SshDevice


def test_every_uri_form_parses():
    ssh = parse_uri("ssh://pi@pi5.lan:2222?identity_file=/k&known_hosts=/kh&work_dir=/home/pi/er")
    assert (ssh.transport, ssh.user, ssh.host, ssh.port) == ("ssh", "pi", "pi5.lan", 2222)
    assert (ssh.identity_file, ssh.known_hosts, ssh.work_dir) == ("/k", "/kh", "/home/pi/er")
    assert ssh.accept_new_host_key is False
    assert parse_uri("adb://R58M123").serial == "R58M123"
    ser = parse_uri("serial:///dev/ttyUSB0?baud=921600")
    assert (ser.transport, ser.path, ser.baud) == ("serial", "/dev/ttyUSB0", 921600)
    q = parse_uri("qemu-aarch64://?cpu=cortex-a72")
    assert (q.transport, q.arch, q.cpu) == ("qemu", "aarch64", "cortex-a72")
    assert parse_uri("local://").transport == "local"


def test_qemu_cpu_follows_the_target_board():
    assert parse_uri("qemu-aarch64://?target=rpi4").cpu == "cortex-a72"
    assert parse_uri("qemu-aarch64://?target=jetson-orin").cpu == "neoverse-n1"
    assert parse_uri("qemu-aarch64://").cpu == "cortex-a76"


@pytest.mark.parametrize("uri, words", [
    ("ftp://x", "unknown device URI scheme"),
    ("ssh://", "no host"),
    ("ssh://a@h?colour=red", "unknown option 'colour'"),
    ("ssh://a@h?threads=many", "threads must be an integer"),
    ("ssh://a@h?work_dir=relative", "absolute"),
    ("ssh://a:pw@h", "passwords"),
    ("serial://?baud=9600", "needs a port path"),
    ("qemu-riscv32://", "unsupported emulated arch"),
    ("local://?cpu=cortex-a76", "cpu applies to qemu"),
])
def test_bad_uris_are_value_errors_that_say_why(uri, words):
    with pytest.raises(ValueError, match=words):
        parse_uri(uri)


def test_a_bad_uri_on_the_command_line_becomes_an_inventory_error():
    with pytest.raises(InventoryError) as ei:
        get_spec("ssh://a@h?nope=1")
    assert ei.value.exit_code == 2 and "nope" in ei.value.message


def test_inventory_entries_and_implicit_local(tmp_path, monkeypatch):
    inv = tmp_path / "devices.toml"
    inv.write_text("""
[devices.pi5]
uri = "ssh://pi@pi5.lan"
target = "rpi5"
work_dir = "/home/pi/edgerun"
env = { OMP_WAIT_POLICY = "passive" }
threads = 4
wrapper = "nice -n 5"

[devices.emu]
uri = "qemu-aarch64://"
target = "rpi4"
""")
    specs = load_inventory(inv)
    assert set(specs) == {"local", "pi5", "emu"}
    pi = specs["pi5"]
    assert (pi.target, pi.threads, dict(pi.env), pi.wrapper) == ("rpi5", 4, {"OMP_WAIT_POLICY": "passive"},
                                                                 ("nice", "-n", "5"))
    assert specs["emu"].cpu == "cortex-a72"
    monkeypatch.setenv("EDGERUN_DEVICES", str(inv))
    assert isinstance(resolve_device("pi5"), SshDevice)
    assert isinstance(resolve_device("emu"), QemuDevice)
    assert isinstance(resolve_device("local"), LocalDevice)
    assert isinstance(resolve_device("local://"), LocalDevice)


def test_default_inventory_is_under_edgerun_home_and_may_be_absent(monkeypatch):
    monkeypatch.delenv("EDGERUN_DEVICES", raising=False)
    assert set(load_inventory()) == {"local"}


def test_bad_entry_names_file_and_entry(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.board]\nuri = "serial:///dev/ttyACM0"\nbaud = "fast"\n')
    with pytest.raises(InventoryError) as ei:
        load_inventory(inv)
    assert str(inv) in ei.value.message and "[devices.board]" in ei.value.message
    assert "baud" in ei.value.message


def test_conflicting_uri_and_option_is_refused(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.x]\nuri = "ssh://h?threads=2"\nthreads = 4\n')
    with pytest.raises(InventoryError, match="both in the URI"):
        load_inventory(inv)


def test_unknown_name_lists_the_known_ones(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.pi]\nuri = "ssh://pi@h"\n')
    with pytest.raises(InventoryError) as ei:
        get_spec("jetson", inv)
    assert "jetson" in ei.value.message and "pi" in ei.value.hint


def test_explicit_missing_inventory_is_an_error(tmp_path):
    with pytest.raises(InventoryError, match="does not exist"):
        load_inventory(tmp_path / "nope.toml")


def test_broken_toml_is_an_error(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text("[devices.x\nuri=")
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(inv)


def test_several_devices_by_list_or_all(tmp_path):
    from edgerun.devices import get_specs

    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.a]\nuri = "qemu-aarch64://"\n[devices.b]\nuri = "ssh://pi@h"\n')
    assert [s.name for s in get_specs("a, local,qemu-aarch64://?cpu=cortex-a72", inv)] == \
        ["a", "local", "qemu-aarch64://"]
    assert [s.name for s in get_specs(None, inv, all_devices=True)] == ["a", "b"]
    # named twice: kept once (issue 9 item 12: never twice at the same time on one device)
    assert [s.name for s in get_specs("a,a", inv)] == ["a"]
    with pytest.raises(InventoryError, match="not both"):
        get_specs("a", inv, all_devices=True)
    with pytest.raises(InventoryError, match="no device"):
        get_specs(" , ", inv)
