"""The probe: one sh script, parsed without guessing."""

from __future__ import annotations

import subprocess

from edgerun.devices.base import DeviceInfo, apply_wrapper_emulation
from edgerun.devices.probe import parse_probe, probe_script

# The shape of a Raspberry Pi 5's answers (Linux's /proc/cpuinfo on ARM has no model name).
PI5_LIKE = """@@section arch
aarch64
@@section kernel
6.6.31+rpt-rpi-2712
@@section os_release
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
@@section android
@@section board
Raspberry Pi 5 Model B Rev 1.0\x00
@@section cpuinfo
processor\t: 0
BogoMIPS\t: 108.00
CPU implementer\t: 0x41
CPU part\t: 0xd0b

processor\t: 1
CPU part\t: 0xd0b
@@section lscpu
@@section nproc
4
@@section meminfo
MemTotal:        8245760 kB
MemFree:         7000000 kB
MemAvailable:    7500000 kB
@@section governor
ondemand
@@section freq
2400000
@@section max_freq
2400000
@@section temp
51350
@@section df
Filesystem     1024-blocks    Used Available Capacity Mounted on
/dev/mmcblk0p2    30000000 5000000  23000000      18% /
"""


def test_parses_a_pi_like_answer():
    info = parse_probe(PI5_LIKE, transport="ssh")
    assert info.arch == "aarch64" and info.cpu_model == "Cortex-A76" and info.cores == 4
    assert info.board == "Raspberry Pi 5 Model B Rev 1.0"
    assert info.mem_total_bytes == 8245760 * 1024 and info.mem_available_bytes == 7500000 * 1024
    assert info.governor == "ondemand" and info.freq_khz == 2400000
    assert info.temperature_c == 51.35
    assert info.free_bytes == 23000000 * 1024
    assert info.os == "Debian GNU/Linux 12 (bookworm)" and info.kernel == "6.6.31+rpt-rpi-2712"


def test_unreadable_fields_stay_none():
    info = parse_probe("@@section arch\nx86_64\n@@section governor\n@@section temp\n", transport="local")
    assert info.governor is None and info.temperature_c is None and info.cpu_model is None


def test_script_runs_on_this_machine(tmp_path):
    out = subprocess.run(["sh", "-c", probe_script(str(tmp_path / "wd"))], capture_output=True, text=True,
                         check=True).stdout
    info = parse_probe(out, transport="local")
    assert info.arch == subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    assert (tmp_path / "wd").is_dir()  # df asked about the work dir, which it made


def test_a_qemu_wrapper_makes_an_emulated_device():
    host = DeviceInfo(arch="x86_64", cpu_model="AMD EPYC", governor="performance", freq_khz=3000000)
    info = apply_wrapper_emulation(host, ["qemu-aarch64", "-cpu", "cortex-a72"])
    assert (info.arch, info.cpu_model, info.emulated, info.host_cpu_model) == \
        ("aarch64", "cortex-a72", True, "AMD EPYC")
    assert info.governor is None
    assert apply_wrapper_emulation(host, ["nice"]) == host


def test_cpu_features_that_decide_int8_speed_are_reported():
    x86 = ("@@section arch\nx86_64\n@@section cpuinfo\nprocessor\t: 0\nmodel name\t: AMD EPYC\n"
           "flags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n")
    info = parse_probe(x86, transport="local")
    assert info.cpu_features == ("avx", "avx2", "fma", "f16c")
    assert info.to_json()["int8_dot_product"] is False
    vnni = parse_probe(x86.replace("bmi2", "bmi2 avx512f avx512_vnni"), transport="local")
    assert "avx512_vnni" in vnni.cpu_features and vnni.to_json()["int8_dot_product"] is True
    arm = PI5_LIKE.replace("CPU part\t: 0xd0b\n\nprocessor\t: 1",
                           "CPU part\t: 0xd0b\nFeatures\t: fp asimd evtstrm aes crc32 asimdhp asimddp\n\nprocessor\t: 1")
    a = parse_probe(arm, transport="ssh")
    assert a.cpu_features == ("asimd", "asimdhp", "asimddp") and a.to_json()["int8_dot_product"] is True
    # no flags line at all: unknown, never "no"
    bare = parse_probe(PI5_LIKE, transport="ssh")
    assert bare.cpu_features is None and bare.to_json()["int8_dot_product"] is None


def test_an_emulated_core_reports_its_own_features_not_the_hosts():
    host = DeviceInfo(arch="x86_64", cpu_model="Xeon", cpu_features=("avx2", "avx512_vnni"))
    a72 = apply_wrapper_emulation(host, ["qemu-aarch64", "-cpu", "cortex-a72", "prog"])
    a76 = apply_wrapper_emulation(host, ["qemu-aarch64", "-cpu", "cortex-a76", "prog"])
    assert a72.to_json()["int8_dot_product"] is False and "asimddp" in a76.cpu_features
    assert apply_wrapper_emulation(host, ["qemu-aarch64", "-cpu", "max", "prog"]).cpu_features is None
