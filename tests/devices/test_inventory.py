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


# ------------------------------------------------------------- per-transport specs, one parser
def test_every_transport_declares_its_spec_beside_its_device_class():
    import importlib

    from edgerun.devices.inventory import transports

    specs = transports()
    assert set(specs) >= {"local", "qemu", "ssh", "adb", "serial", "fake"}
    for name, cls in specs.items():
        module, _, device_cls = cls.device_class.partition(":")
        assert cls.__module__ == module, f"{name}: spec registered away from its transport"
        assert getattr(importlib.import_module(module), device_cls).transport == name


def test_options_are_coerced_from_the_field_types(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.b]\nuri = "serial:///dev/ttyACM0?baud=921600"\nconnect_timeout = "2.5"\n'
                   'cleanup = "yes"\nenv = { N = 3 }\nwrapper = ["nice", "-n", "1"]\n')
    spec = load_inventory(inv)["b"]
    assert (spec.baud, spec.connect_timeout, spec.cleanup, dict(spec.env), spec.wrapper) == \
        (921600, 2.5, True, {"N": "3"}, ("nice", "-n", "1"))
    with pytest.raises(ValueError, match="connect_retries must be an integer"):
        parse_uri("local://?connect_retries=2.5")
    with pytest.raises(ValueError, match="cleanup must be true or false"):
        parse_uri("local://?cleanup=maybe")


def test_an_unknown_option_names_entry_file_transport_and_the_known_ones(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.pi5]\nuri = "ssh://pi@pi5.lan"\nfoo = 1\n')
    with pytest.raises(InventoryError) as ei:
        load_inventory(inv)
    msg = ei.value.message
    assert msg.startswith(f"{inv}, entry 'pi5'") and "unknown option 'foo' for ssh; known: " in msg
    assert "identity_file" in msg and "baud" not in msg
    with pytest.raises(ValueError, match="did you mean identity_file"):
        parse_uri("ssh://h?identity_flie=/k")
    with pytest.raises(ValueError, match="baud applies to serial devices only"):
        parse_uri("ssh://h?baud=9600")


def test_a_device_named_twice_in_any_spelling_runs_once(tmp_path, caplog):
    """Issue 9 item 12: --device local://,local:// ran twice concurrently on one device."""
    from edgerun.devices import parse_device_list

    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.emu]\nuri = "qemu-aarch64://?cpu=cortex-a72"\n')
    assert [s.ref for s in parse_device_list("local://,local://", inventory=inv)] == ["local://"]
    assert [s.ref for s in parse_device_list("local,local://", inventory=inv)] == ["local"]
    assert [s.ref for s in parse_device_list("emu,qemu-aarch64://?cpu=cortex-a72,qemu-aarch64://",
                                             inventory=inv)] == ["emu", "qemu-aarch64://"]
    assert "same device" in caplog.text
    assert [s.ref for s in parse_device_list(["local", "emu"], inventory=inv)] == ["local", "emu"]
    assert [s.ref for s in parse_device_list(None, all_devices=True, inventory=inv)] == ["emu"]


def test_a_spec_resolves_back_from_its_ref(tmp_path):
    from edgerun.devices import parse_device_list

    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.emu]\nuri = "qemu-aarch64://?cpu=cortex-a72"\n')
    for spec in parse_device_list("emu,qemu-aarch64://?cpu=neoverse-n1", inventory=inv):
        assert get_spec(spec.ref, inv) == spec
        assert resolve_device(spec).spec is spec


def test_a_qemu_cpu_qemu_does_not_list_is_refused_before_any_work_with_a_suggestion(tmp_path):
    """Issue 13 item 4: a typo in the CPU failed only at deploy time, deep in a run."""
    import shutil

    from edgerun.devices import parse_device_list
    from edgerun.devices.qemu import qemu_cpu_models

    if not shutil.which("qemu-aarch64"):
        pytest.skip("qemu-aarch64 not installed (Debian qemu-user)")
    with pytest.raises(InventoryError) as ei:
        parse_device_list("local,qemu-aarch64://?cpu=cortex-a67")
    assert "did you mean cortex-a76?" in ei.value.message and ei.value.exit_code == 2
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.emu]\nuri = "qemu-aarch64://"\ncpu = "cortex-a7"\n')
    with pytest.raises(InventoryError, match=f"{inv}, entry 'emu'.*no CPU model 'cortex-a7'"):
        get_spec("emu", inv)
    qemu_cpu_models.cache_clear()
    for _ in range(3):
        get_spec("qemu-aarch64://?cpu=cortex-a72")
    assert qemu_cpu_models.cache_info().misses == 1  # asked once per process


def test_a_missing_identity_file_is_refused_when_the_device_is_chosen(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.pi]\nuri = "ssh://pi@h"\nidentity_file = "{tmp_path}/no-such-key"\n')
    assert load_inventory(inv)["pi"].identity_file == f"{tmp_path}/no-such-key"  # listing still works
    with pytest.raises(InventoryError) as ei:
        get_spec("pi", inv)
    assert "entry 'pi'" in ei.value.message and "no-such-key does not exist" in ei.value.message


def test_the_devices_modules_import_without_a_cycle():
    """base imports probe (and info); probe imports neither base nor anything that imports base."""
    import ast
    from pathlib import Path

    import edgerun.devices as pkg

    root = Path(pkg.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgerun.devices."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.module == "edgerun.devices":
                deps.update(a.name for a in node.names if (root / f"{a.name}.py").exists())
        graph[path.stem] = deps - {path.stem}

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, seen + (d,))) for d in graph.get(start, ()))

    cycles = sorted(m for m in graph if m != "__init__" and reaches(m, m))
    assert cycles == [], f"import cycles through {cycles}"
    assert "base" in graph["remote"] and "remote" in graph["ssh"] and "remote" in graph["adb"]


def test_an_env_name_that_is_not_a_variable_name_is_refused_when_the_inventory_is_read(tmp_path):
    """Issue 9 item 15: an invalid env name on ssh failed only at exec, as an internal error."""
    from edgerun.devices.inventory import InventoryError, load_inventory

    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.pi]\nuri = "local://"\nenv = { "BAD NAME;rm" = "1" }\n')
    with pytest.raises(InventoryError, match=r"entry 'pi'.*'BAD NAME;rm' is not an environment variable name"):
        load_inventory(inv)
