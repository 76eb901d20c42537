"""Devices by name or URI: the inventory file and the one dataclass every entry maps onto.

A device is a URI plus options::

    local://
    qemu-aarch64://?cpu=cortex-a76
    ssh://user@host:port?identity_file=PATH&known_hosts=PATH
    adb://SERIAL
    serial:///dev/ttyUSB0?baud=115200

The inventory is TOML (path by ``--inventory``, else ``$EDGERUN_DEVICES``, else
``$EDGERUN_HOME/devices.toml``)::

    [devices.pi5]
    uri = "ssh://pi@pi5.lan"
    target = "rpi5"
    work_dir = "/home/pi/edgerun"
    env = { OMP_WAIT_POLICY = "passive" }
    threads = 4
    identity_file = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"

Every key (in the table or in the URI's query) is a field of :class:`DeviceSpec`, validated in
``__post_init__``; a bad entry becomes an :class:`InventoryError` naming the file and the entry.
``local://`` is always available, even without an inventory.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from edgerun.core.paths import edgerun_home
from edgerun.core.errors import UsageError

TRANSPORTS = ("local", "qemu", "ssh", "adb", "serial")
# Board -> the CPU qemu emulates for it. Never qemu's default "max": it enables SME, and
# XNNPACK's int8 kernels then compute wrong results under emulation.
TARGET_CPUS = {"rpi4": "cortex-a72", "rpi5": "cortex-a76", "jetson-orin": "neoverse-n1"}
DEFAULT_QEMU_CPU = "cortex-a76"
QEMU_ARCHES = ("aarch64",)


class InventoryError(UsageError):
    """The inventory file, an entry in it, or a device URI is wrong."""

    default_stage = "inventory"


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"{key} must be true or false, got {value!r}")


@dataclass(frozen=True)
class DeviceSpec:
    """One device: its URI's parts plus options. The fields are the inventory's keys."""

    name: str
    uri: str
    transport: str
    target: str | None = None
    work_dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None
    wrapper: tuple[str, ...] = ()
    # ssh
    host: str | None = None
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False  # explicit opt-in to trust an unknown host key
    # adb
    serial: str | None = None
    # serial
    path: str | None = None
    baud: int = 115200
    # qemu
    arch: str | None = None
    cpu: str | None = None
    # every transport
    connect_timeout: float = 10.0
    connect_retries: int = 2  # extra attempts on a transient connect failure (not on exec)
    probe_timeout: float = 30.0
    cleanup: bool = False  # remove work_dir on close()

    def __post_init__(self):
        if not self.name:
            raise ValueError("a device needs a name")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r}; known: {', '.join(TRANSPORTS)}")
        if self.work_dir is not None and not self.work_dir.startswith("/"):
            raise ValueError(f"work_dir must be an absolute path on the device, got {self.work_dir!r}")
        if not isinstance(self.env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ValueError("env must be a table of string keys to string values")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 0):
            raise ValueError(f"threads must be an integer >= 0, got {self.threads!r}")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {self.connect_timeout!r}")
        if not 0 <= self.connect_retries <= 10:
            raise ValueError(f"connect_retries must be 0..10, got {self.connect_retries!r}")
        if self.transport == "ssh":
            if not self.host:
                raise ValueError("an ssh device needs a host: ssh://user@host[:port]")
            if self.port is not None and not 0 < self.port < 65536:
                raise ValueError(f"port out of range: {self.port}")
        if self.transport == "serial":
            if not self.path:
                raise ValueError("a serial device needs a port path: serial:///dev/ttyUSB0")
            if self.baud <= 0:
                raise ValueError(f"baud must be > 0, got {self.baud}")
        if self.transport == "qemu":
            if self.arch not in QEMU_ARCHES:
                raise ValueError(f"unsupported emulated arch {self.arch!r}; supported: {QEMU_ARCHES}")
            if not self.cpu:
                raise ValueError("a qemu device needs a cpu")
        if self.transport != "qemu" and self.cpu:
            raise ValueError("cpu applies to qemu devices only (use wrapper for other transports)")

    def to_json(self) -> dict:
        """The fields that say something: name, uri, transport, and every non-default option."""
        out: dict[str, Any] = {"name": self.name, "uri": self.uri, "transport": self.transport}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name not in out and value != default:
                out[f.name] = dict(value) if f.name == "env" else list(value) if f.name == "wrapper" else value
        return out


# URI / table keys that are not plain strings
_INT_KEYS = {"threads", "port", "baud", "connect_retries"}
_FLOAT_KEYS = {"connect_timeout", "probe_timeout"}
_BOOL_KEYS = {"accept_new_host_key", "cleanup"}
_OPTION_KEYS = {f.name for f in dataclasses.fields(DeviceSpec)} - {"name", "uri", "transport"}


def _coerce(key: str, value: Any) -> Any:
    if key not in _OPTION_KEYS:
        raise ValueError(f"unknown option {key!r}; known: {', '.join(sorted(_OPTION_KEYS))}")
    if key in _INT_KEYS:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if key in _FLOAT_KEYS:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if key in _BOOL_KEYS:
        return _bool(value, key)
    if key == "wrapper":
        if isinstance(value, str):
            return tuple(shlex.split(value))
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError("wrapper must be a command line string or a list of strings")
    if key == "env":
        if not isinstance(value, Mapping):
            raise ValueError("env must be a table")
        return {str(k): str(v) for k, v in value.items()}
    if key in ("identity_file", "known_hosts") and isinstance(value, str):
        return os.path.expanduser(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def parse_uri(uri: str, *, name: str | None = None, options: Mapping[str, Any] | None = None) -> DeviceSpec:
    """Map a device URI (+ inventory options) onto a :class:`DeviceSpec`. Raises ``ValueError``."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    kw: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kw[key] = _coerce(key, value)
    for key, value in (options or {}).items():
        value = _coerce(key, value)
        if key in kw and kw[key] != value:
            raise ValueError(f"{key} is given both in the URI ({kw[key]!r}) and as an option ({value!r})")
        kw[key] = value

    if scheme == "local":
        transport = "local"
    elif scheme.startswith("qemu-"):
        transport = "qemu"
        kw["arch"] = scheme[len("qemu-"):]
        if not kw.get("cpu"):
            kw["cpu"] = TARGET_CPUS.get(kw.get("target") or "", DEFAULT_QEMU_CPU)
    elif scheme == "ssh":
        transport = "ssh"
        if not parts.hostname:
            raise ValueError(f"no host in {uri!r}; expected ssh://user@host[:port]")
        kw["host"] = parts.hostname
        if parts.username:
            kw["user"] = unquote(parts.username)
        if parts.password is not None:
            raise ValueError("passwords in ssh URIs are not supported; use key auth (identity_file)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {uri!r}: {exc}") from None
        if port is not None:
            kw["port"] = port
    elif scheme == "adb":
        transport = "adb"
        if parts.netloc:
            kw["serial"] = unquote(parts.netloc)
    elif scheme == "serial":
        transport = "serial"
        kw["path"] = unquote(parts.path or "")
    else:
        raise ValueError(f"unknown device URI scheme {scheme!r} in {uri!r}; "
                         "use local://, qemu-aarch64://, ssh://, adb:// or serial://")
    # A URI given directly is named without its query (keys paths stay out of messages).
    return DeviceSpec(name=name or uri.split("?", 1)[0], uri=uri, transport=transport, **kw)


LOCAL_SPEC_NAME = "local"


def inventory_path(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    env = os.environ.get("EDGERUN_DEVICES")
    if env:
        return Path(env).expanduser()
    return edgerun_home() / "devices.toml"


def load_inventory(path: str | os.PathLike | None = None) -> dict[str, DeviceSpec]:
    """All devices of the inventory (``local`` always included). A missing default file is empty."""
    p = inventory_path(path)
    explicit = bool(path) or bool(os.environ.get("EDGERUN_DEVICES"))
    specs: dict[str, DeviceSpec] = {LOCAL_SPEC_NAME: parse_uri("local://", name=LOCAL_SPEC_NAME)}
    if not p.exists():
        if explicit:
            raise InventoryError(f"inventory file {p} does not exist",
                                 hint="Pass --inventory PATH or set EDGERUN_DEVICES to an existing TOML file.")
        return specs
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InventoryError(f"cannot read inventory {p}: {exc}",
                             hint="It must be TOML with one [devices.NAME] table per device.") from exc
    devices = data.get("devices", {})
    if not isinstance(devices, dict):
        raise InventoryError(f"{p}: 'devices' must be a table of [devices.NAME] tables")
    for name, entry in devices.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise InventoryError(f"{p}: entry [devices.{name}] needs a uri = \"...\" string",
                                 hint="e.g. uri = \"ssh://pi@pi5.lan\"")
        options = {k: v for k, v in entry.items() if k != "uri"}
        try:
            specs[name] = parse_uri(entry["uri"], name=name, options=options)
        except ValueError as exc:
            raise InventoryError(f"{p}: entry [devices.{name}]: {exc}",
                                 hint="Fix the entry; keys are the DeviceSpec fields.") from exc
    return specs


def get_spec(name_or_uri: str, inventory: str | os.PathLike | None = None) -> DeviceSpec:
    """An inventory name, or a URI given directly (anything containing ``://``)."""
    if "://" in name_or_uri:
        try:
            return parse_uri(name_or_uri)
        except ValueError as exc:
            raise InventoryError(f"bad device URI {name_or_uri!r}: {exc}",
                                 hint="See `edgerun devices --help` for the URI forms.") from exc
    specs = load_inventory(inventory)
    if name_or_uri not in specs:
        raise InventoryError(
            f"no device named {name_or_uri!r} in {inventory_path(inventory)}",
            hint=f"Known: {', '.join(sorted(specs))}. Or pass a URI such as ssh://user@host.")
    return specs[name_or_uri]


# transport -> "module:Class"; modules load lazily so a missing optional tool costs nothing.
DEVICE_CLASSES = {
    "local": "edgerun.devices.local:LocalDevice",
    "qemu": "edgerun.devices.qemu:QemuDevice",
    "ssh": "edgerun.devices.ssh:SshDevice",
    "adb": "edgerun.devices.adb:AdbDevice",
    "serial": "edgerun.devices.serial_device:SerialDevice",
}


def make_device(spec: DeviceSpec):
    """The :class:`~edgerun.devices.base.Device` for a spec."""
    module, _, cls = DEVICE_CLASSES[spec.transport].partition(":")
    return getattr(importlib.import_module(module), cls)(spec)


def resolve_device(name_or_uri: str, inventory: str | os.PathLike | None = None):
    """Name or URI -> an open-able :class:`Device` (connection happens on first use)."""
    return make_device(get_spec(name_or_uri, inventory))


def get_specs(names: str | None, inventory: str | os.PathLike | None = None, *, all_devices: bool = False
              ) -> list[DeviceSpec]:
    """``--device a,b,c`` (names or URIs, comma-separated) or ``--all`` (every device in the file).

    A URI that itself contains a comma must be given a name in the inventory.
    """
    if all_devices:
        if names:
            raise InventoryError("give --device or --all, not both")
        specs = load_inventory(inventory)
        named = [spec for name, spec in specs.items() if name != LOCAL_SPEC_NAME]
        if not named:
            raise InventoryError(f"--all: no devices in {inventory_path(inventory)}",
                                 hint="Add [devices.NAME] tables with a uri each.")
        return named
    items = [item.strip() for item in (names or "").split(",") if item.strip()]
    if not items:
        raise InventoryError("no device given", hint="Pass --device NAME_OR_URI[,...] or --all.")
    if len(set(items)) != len(items):
        raise InventoryError(f"a device is named twice in {names!r}")
    return [get_spec(item, inventory) for item in items]
