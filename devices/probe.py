"""What a device is: one POSIX sh script run on it, parsed here into a :class:`DeviceInfo`.

The script only reads (``/proc``, ``/sys``, ``uname``, ``lscpu``, ``df``, Android ``getprop``) and
prints labelled sections (``/proc/stat`` twice, a quarter second apart, for the machine's load); anything unreadable is simply absent and becomes ``None`` -- a probe
never guesses. The same script serves local, ssh, adb and serial-agent devices.
"""

from __future__ import annotations

import shlex

from edgerun.core.text import sanitize_text
from edgerun.devices.info import DeviceInfo, speed_features
from edgerun.devices.workdir import create_script

# ARM "CPU part" ids (MIDR) of the cores edge boards carry; /proc/cpuinfo on ARM has no model name.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}

_SECTIONS = [
    ("arch", "uname -m"),
    ("kernel", "uname -r"),
    ("os_release", "cat /etc/os-release"),
    ("android", "getprop ro.build.version.release"),
    ("board", "cat /proc/device-tree/model || cat /sys/firmware/devicetree/base/model"),
    ("cpuinfo", "cat /proc/cpuinfo"),
    ("lscpu", "LC_ALL=C lscpu"),
    ("nproc", "nproc || getconf _NPROCESSORS_ONLN"),
    ("meminfo", "cat /proc/meminfo"),
    ("governor", "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    ("freq", "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
    ("max_freq", "cat /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
    ("temp", "cat /sys/class/thermal/thermal_zone0/temp"),
    ("loadavg", "cat /proc/loadavg"),
    ("stat1", "head -n 1 /proc/stat"),
    ("stat2", "sleep 0.25 2>/dev/null || sleep 1; head -n 1 /proc/stat"),
]


def probe_script(work_dir: str) -> str:
    """The sh script; ``df`` is asked about ``work_dir`` (created first) for free space."""
    lines = []
    for label, cmd in _SECTIONS:
        lines.append(f"echo '@@section {label}'; ( {cmd} ) 2>/dev/null")
    wd = shlex.quote(work_dir)
    lines.append(f"{create_script(work_dir)}; echo '@@section df'; df -Pk {wd} 2>/dev/null")
    lines.append("exit 0")
    return "\n".join(lines)


def _sections(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in raw.splitlines():
        if line.startswith("@@section "):
            current = line[len("@@section "):].strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return {k: v.strip() for k, v in out.items()}


def _int(text: str | None) -> int | None:
    try:
        return int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def _kv(text: str, sep: str = ":") -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            out.setdefault(k.strip(), v.strip())
    return out


def _cpu_model(cpuinfo: str, lscpu: str) -> str | None:
    info = _kv(cpuinfo)
    if info.get("model name"):  # x86, and some ARM kernels
        return info["model name"]
    lk = _kv(lscpu)
    if lk.get("Model name") and lk["Model name"] not in ("-", "unknown"):
        return lk["Model name"]
    parts = sorted({v.strip().lower() for k, v in
                    (ln.split(":", 1) for ln in cpuinfo.splitlines() if ":" in ln)
                    if k.strip() == "CPU part"})
    names = [ARM_PARTS.get(p, f"ARM part {p}") for p in parts]
    if names:
        return " + ".join(names)  # big.LITTLE boards list several
    return info.get("Hardware") or info.get("Processor") or None


def _cpu_flags(cpuinfo: str) -> list[str] | None:
    """x86 lists ``flags``, Arm ``Features`` (per core; the first is taken)."""
    info = _kv(cpuinfo)
    text = info.get("flags") or info.get("Features")
    return text.split() if text else None


def _load_1m(text: str | None) -> float | None:
    try:
        value = float(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None
    return value if value is not None and 0.0 <= value < 1e6 else None


def _cpu_shares(first: str | None, second: str | None) -> tuple[float | None, float | None]:
    """(busy, steal) shares of all cores' time between two ``cpu`` lines of /proc/stat (user nice
    system idle iowait irq softirq steal ...); None where unreadable or the window is empty."""
    def fields(line: str | None) -> list[int] | None:
        parts = (line or "").split()
        if len(parts) < 5 or parts[0] != "cpu":
            return None
        try:
            return [int(x) for x in parts[1:11]]
        except ValueError:
            return None

    a, b = fields(first), fields(second)
    if a is None or b is None or len(a) != len(b):
        return None, None
    d = [y - x for x, y in zip(a, b)]
    if any(x < 0 for x in d):
        return None, None
    # guest and guest_nice (fields 9, 10) are already counted in user and nice
    total = sum(d[:8])
    if total <= 0:
        return None, None
    idle = d[3] + d[4]
    steal = d[7] if len(d) > 7 else 0
    return round((total - idle - steal) / total, 4), (round(steal / total, 4) if len(a) > 7 else None)


def _os(sections: dict[str, str]) -> str | None:
    if sections.get("android"):
        return f"Android {sections['android']}"
    rel = _kv(sections.get("os_release", ""), "=")
    name = rel.get("PRETTY_NAME") or rel.get("NAME")
    return name.strip('"') if name else None


def parse_probe(raw: str, *, transport: str) -> DeviceInfo:
    """Turn the probe script's output into a :class:`DeviceInfo` (missing -> ``None``).

    The device's answers are sanitised first: a cpu model or OS name is printed later, and a
    device may not send escape sequences to the user's terminal.
    """
    s = _sections(sanitize_text(raw))
    arch = s.get("arch") or ""
    if not arch:
        raise ValueError("probe output has no architecture (uname -m printed nothing)")
    mem = _kv(s.get("meminfo", ""))
    mem_total = _int(mem.get("MemTotal"))
    mem_avail = _int(mem.get("MemAvailable"))
    cores = _int(s.get("nproc"))
    if cores is None:
        cores = sum(1 for ln in s.get("cpuinfo", "").splitlines() if ln.startswith("processor")) or None
    temp = _int(s.get("temp"))
    free = None
    df_lines = s.get("df", "").splitlines()
    if len(df_lines) >= 2:
        fields = df_lines[-1].split()
        if len(fields) >= 4 and fields[3].isdigit():
            free = int(fields[3]) * 1024
    board = s.get("board", "").replace("\x00", "").strip() or None
    flags = _cpu_flags(s.get("cpuinfo", ""))
    arch = arch.split()[0]
    busy, steal = _cpu_shares(s.get("stat1"), s.get("stat2"))
    return DeviceInfo(
        arch=arch,
        cpu_features=speed_features(arch, flags) if flags is not None else None,
        cpu_model=_cpu_model(s.get("cpuinfo", ""), s.get("lscpu", "")),
        cores=cores,
        mem_total_bytes=mem_total * 1024 if mem_total is not None else None,
        mem_available_bytes=mem_avail * 1024 if mem_avail is not None else None,
        os=_os(s),
        kernel=s.get("kernel") or None,
        board=board,
        governor=s.get("governor") or None,
        freq_khz=_int(s.get("freq")),
        max_freq_khz=_int(s.get("max_freq")),
        temperature_c=temp / 1000.0 if temp is not None else None,
        free_bytes=free,
        transport=transport,
        load_1m=_load_1m(s.get("loadavg")),
        cpu_busy=busy,
        cpu_steal=steal,
    )


__all__ = ["probe_script", "parse_probe", "ARM_PARTS"]
