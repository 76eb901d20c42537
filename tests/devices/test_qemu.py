"""QemuDevice: a real aarch64 program, started through its bundled loader, under real qemu-aarch64."""

from __future__ import annotations

import pytest

from edgerun.devices import DeviceTimeout, resolve_device, sync_files

pytestmark = pytest.mark.qemu


def test_bundle_runs_through_its_loader_under_the_board_cpu(aarch64_bundle, bundle_argv, tmp_path):
    with resolve_device(f"qemu-aarch64://?target=rpi4&work_dir={tmp_path}") as dev:
        assert dev.wrapper == ["qemu-aarch64", "-cpu", "cortex-a72"]
        res = dev.exec(bundle_argv("a b", "$x;y"), timeout=60, cwd=str(aarch64_bundle),
                       env={"EDGERUN_TEST": "v"})
    assert res.rc == 0, res.stderr_text
    assert res.stdout_text.strip() == "machine=aarch64 [a b] [$x;y] env=v"
    assert res.stderr == b"stderr line\n"


def test_info_says_emulated_aarch64_with_the_emulated_cpu(tmp_path):
    with resolve_device(f"qemu-aarch64://?cpu=neoverse-n1&work_dir={tmp_path}") as dev:
        info = dev.info()
    assert info.arch == "aarch64" and info.emulated is True
    assert info.cpu_model == "neoverse-n1"
    assert info.emulator == "qemu-aarch64 -cpu neoverse-n1"
    assert info.host_cpu_model  # the real CPU underneath is named, not hidden
    assert info.governor is None and info.freq_khz is None  # host clocks say nothing about the emulated CPU


def test_default_cpu_is_a_real_core_never_max():
    with resolve_device("qemu-aarch64://") as dev:
        assert dev.wrapper[2] == "cortex-a76"


def test_crash_by_signal_under_qemu(aarch64_bundle, bundle_argv, tmp_path):
    with resolve_device(f"qemu-aarch64://?work_dir={tmp_path}") as dev:
        res = dev.exec(bundle_argv("crash"), timeout=60, cwd=str(aarch64_bundle))
    assert res.signal == 11 and res.stdout == b"about to crash\n"


def test_timeout_under_qemu_keeps_partial_output(aarch64_bundle, bundle_argv, tmp_path):
    with resolve_device(f"qemu-aarch64://?work_dir={tmp_path}") as dev:
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(bundle_argv("sleep", "30"), timeout=2, cwd=str(aarch64_bundle))
    assert ei.value.result.stdout == b"sleeping\n"


def test_synced_bundle_runs_from_its_content_addressed_dir(aarch64_bundle, bundle_argv, tmp_path):
    files = sorted(p for p in aarch64_bundle.iterdir())
    with resolve_device(f"qemu-aarch64://?work_dir={tmp_path}/wd") as dev:
        synced = sync_files(dev, files)
        res = dev.exec(bundle_argv("x"), timeout=60, cwd=synced.dest)
    assert res.rc == 0 and res.stdout_text.startswith("machine=aarch64 [x]")


def test_on_stdout_streams_under_qemu(aarch64_bundle, bundle_argv, tmp_path):
    """The program flushes "sleeping" before sleep(1): it must arrive alone, before the last line."""
    seen: list[bytes] = []
    with resolve_device(f"qemu-aarch64://?work_dir={tmp_path}") as dev:
        res = dev.exec(bundle_argv("sleep", "1"), timeout=120, cwd=str(aarch64_bundle), on_stdout=seen.append)
    assert res.rc == 0, res.stderr_text
    assert seen[0] == b"sleeping\n" and b"".join(seen) == res.stdout
    assert res.stdout.startswith(b"sleeping\nmachine=aarch64")


@pytest.mark.parametrize("uri", ["qemu-aarch64://?cpu=max", "qemu-aarch64://?cpu=MAX", "qemu-aarch64://?cpu=host",
                                 "qemu-aarch64://?target=rpi5&cpu=max"])
def test_a_cpu_that_breaks_int8_is_refused_up_front_naming_the_models_that_work(uri, tmp_path):
    """Issue 20: ``cpu=max`` was warned about, then run and stored. It is a usage error (exit 2) when
    the device is named, before any work, and the message lists the board cores that work."""
    from edgerun.devices import parse_device_list
    from edgerun.devices.inventory import InventoryError

    with pytest.raises(InventoryError) as ei:
        parse_device_list(uri)
    assert ei.value.exit_code == 2
    for core in ("cortex-a72", "cortex-a76", "neoverse-n1"):
        assert core in ei.value.message
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.emu]\nuri = "qemu-aarch64://"\ncpu = "max"\n')
    with pytest.raises(InventoryError, match="refused"):
        parse_device_list("emu", inventory=inv)


def test_profile_refuses_cpu_max_before_any_run_directory(cli, tmp_path, edgerun_home):
    runs = edgerun_home / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    r = cli("profile", str(tmp_path / "no-artifact-needed"), "--device", "qemu-aarch64://?cpu=max", "--json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "cortex-a76" in r.stdout and "SME" in r.stdout
    assert (set(runs.iterdir()) if runs.exists() else set()) == before
