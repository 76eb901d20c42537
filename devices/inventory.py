"""Devices by name or URI: the inventory file, the device-list parser, and making devices.

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

The URI's scheme picks the transport; every key (in the table or in the URI's query) is a field of
that transport's spec class (:mod:`edgerun.devices.spec`, each registered beside its transport);
a bad entry becomes an :class:`InventoryError` naming the file and the entry. ``local://`` is
always available as ``local``, even without an inventory, and no entry may take that name.
Options that run a command or set the environment (``wrapper``, ``env``) are accepted only from an
inventory file, never from a URI.
"""

from __future__ import annotations

import importlib
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

from edgerun.core.errors import UsageError
from edgerun.core.paths import edgerun_home
from edgerun.devices.spec import DeviceSpec, coerce_options, registered, spec_class_for_scheme

log = logging.getLogger("edgerun.devices")

# The modules that register a transport (each declares its spec class beside its device class).
TRANSPORT_MODULES = ("edgerun.devices.local", "edgerun.devices.qemu", "edgerun.devices.ssh",
                     "edgerun.devices.adb", "edgerun.devices.serial_device", "edgerun.devices.fake",
                     "edgerun.devices.estimate", "edgerun.devices.labgrid")
LOCAL_SPEC_NAME = "local"


class InventoryError(UsageError):
    """The inventory file, an entry in it, or a device URI is wrong."""

    default_stage = "inventory"


def _transports() -> dict[str, type[DeviceSpec]]:
    for module in TRANSPORT_MODULES:
        importlib.import_module(module)  # registering is a side effect of the import
    return registered()


def transports() -> dict[str, type[DeviceSpec]]:
    """Transport name -> its spec class (every registered transport)."""
    return _transports()


def parse_uri(uri: str, *, name: str | None = None, options: Mapping[str, Any] | None = None) -> DeviceSpec:
    """Map a device URI (+ options, as an inventory entry gives them) onto its transport's spec.

    Raises ``ValueError`` saying what is wrong. Options in the URI's query may not run commands
    (``wrapper``) or set the environment (``env``); ``options`` (from an inventory file) may.
    """
    if not isinstance(uri, str):
        raise ValueError(f"a device URI must be a string, got {uri!r}")
    parts = urlsplit(uri)
    _transports()
    cls = spec_class_for_scheme(parts.scheme)
    if cls is None:
        schemes = ", ".join(c.about or f"{t}://" for t, c in registered().items() if t != "fake")
        raise ValueError(f"unknown device URI scheme {parts.scheme!r} in {uri!r}; use {schemes}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    kw = coerce_options(cls, query, from_uri=True)
    for key, value in coerce_options(cls, options or {}, from_uri=False).items():
        if key in kw and kw[key] != value:
            raise ValueError(f"{key} is given both in the URI ({kw[key]!r}) and as an option ({value!r})")
        kw[key] = value
    kw.update(cls.from_uri(parts))
    # A URI given directly is named without its query (key paths stay out of messages).
    return cls(name=name or uri.split("?", 1)[0], uri=uri, **kw)


def inventory_path(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    env = os.environ.get("EDGERUN_DEVICES")
    if env:
        return Path(env).expanduser()
    return edgerun_home() / "devices.toml"


def _entry_error(path: Path, name: str, exc: Exception) -> InventoryError:
    return InventoryError(f"{path}, entry {name!r} ([devices.{name}]): {exc}",
                          hint="Fix the entry; its keys are the options of its transport "
                               "(see `edgerun devices --help`).")


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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InventoryError(f"cannot read inventory {p}: {exc}",
                             hint="It must be TOML with one [devices.NAME] table per device.") from exc
    devices = data.get("devices", {})
    if not isinstance(devices, dict):
        raise InventoryError(f"{p}: 'devices' must be a table of [devices.NAME] tables")
    for name, entry in devices.items():
        if name == LOCAL_SPEC_NAME:
            raise InventoryError(f"{p}, entry 'local' ([devices.local]): the name 'local' is the built-in "
                                 "local:// device and cannot be redefined",
                                 hint="Give the entry another name (e.g. [devices.local-wd]).")
        if "://" in name:
            raise InventoryError(f"{p}, entry {name!r}: a device name cannot contain '://' (it would read as a URI)")
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise InventoryError(f"{p}, entry {name!r} ([devices.{name}]) needs a uri = \"...\" string",
                                 hint="e.g. uri = \"ssh://pi@pi5.lan\"")
        options = {k: v for k, v in entry.items() if k != "uri"}
        try:
            specs[name] = parse_uri(entry["uri"], name=name, options=options)
        except ValueError as exc:
            raise _entry_error(p, name, exc) from exc
    return specs


def _checked(spec: DeviceSpec, inventory: str | os.PathLike | None, from_file: bool) -> DeviceSpec:
    """``spec`` once what can be checked here holds (key files exist, qemu knows the CPU)."""
    try:
        spec.check_local()
    except ValueError as exc:
        if from_file:
            raise _entry_error(inventory_path(inventory), spec.name, exc) from exc
        raise InventoryError(f"bad device URI {spec.uri!r}: {exc}",
                             hint="See `edgerun devices --help` for the URI forms.") from exc
    return spec


def _lookup(name_or_uri: str, inventory, specs: dict[str, DeviceSpec] | None) -> DeviceSpec:
    if "://" in name_or_uri:
        try:
            spec = parse_uri(name_or_uri)
        except ValueError as exc:
            raise InventoryError(f"bad device URI {name_or_uri!r}: {exc}",
                                 hint="See `edgerun devices --help` for the URI forms.") from exc
        return _checked(spec, inventory, from_file=False)
    specs = specs if specs is not None else load_inventory(inventory)
    if name_or_uri not in specs:
        raise InventoryError(
            f"no device named {name_or_uri!r} in {inventory_path(inventory)}",
            hint=f"Known: {', '.join(sorted(specs))}. Or pass a URI such as ssh://user@host.")
    return _checked(specs[name_or_uri], inventory, from_file=name_or_uri != LOCAL_SPEC_NAME)


def get_spec(name_or_uri: str, inventory: str | os.PathLike | None = None) -> DeviceSpec:
    """An inventory name, or a URI given directly (anything containing ``://``), checked before any work."""
    return _lookup(name_or_uri, inventory, None)


def parse_device_list(text: str | Sequence[str] | None, *, all_devices: bool = False,
                      inventory: str | os.PathLike | None = None) -> list[DeviceSpec]:
    """The one meaning of ``--device a,b`` and ``--all`` for every command.

    ``text``: names or URIs, comma-separated (or a list of them); ``all_devices``: every entry of
    the inventory file (the built-in ``local`` is not an entry). Each is resolved and checked
    before any work; a device named twice -- also by two spellings, ``local`` and ``local://`` --
    is kept once (a warning says so), so nothing runs twice at the same time on one device.
    A URI that itself contains a comma must be given a name in the inventory.
    """
    items: list[str]
    if isinstance(text, str) or text is None:
        items = [item.strip() for item in (text or "").split(",") if item.strip()]
    else:
        items = [str(item).strip() for item in text if str(item).strip()]
    if all_devices:
        if items:
            raise InventoryError("give --device or --all, not both")
        specs = load_inventory(inventory)
        chosen = [_checked(spec, inventory, from_file=True) for name, spec in specs.items()
                  if name != LOCAL_SPEC_NAME]
        if not chosen:
            raise InventoryError(f"--all: no devices in {inventory_path(inventory)}",
                                 hint="Add [devices.NAME] tables with a uri each.")
    else:
        if not items:
            raise InventoryError("no device given", hint="Pass --device NAME_OR_URI[,...] or --all.")
        specs = load_inventory(inventory) if any("://" not in item for item in items) else None
        chosen = [_lookup(item, inventory, specs) for item in items]
    chosen = [one for spec in chosen for one in _expanded(spec)]
    out: list[DeviceSpec] = []
    seen: dict[tuple, DeviceSpec] = {}
    for spec in chosen:
        first = seen.get(spec.identity())
        if first is not None:
            log.warning("device %r is the same device as %r: running on it once", spec.ref, first.ref)
            continue
        seen[spec.identity()] = spec
        out.append(spec)
    return out


def _expanded(spec: DeviceSpec) -> list[DeviceSpec]:
    """A device source's devices (``labgrid://?tag=..``: each place), each checked like the spec itself."""
    try:
        specs = spec.expand()
    except ValueError as exc:
        raise InventoryError(f"bad device {spec.ref!r}: {exc}") from exc
    return [spec] if specs == [spec] else [_checked(s, None, from_file=False) for s in specs]


def get_specs(names: str | None, inventory: str | os.PathLike | None = None, *, all_devices: bool = False
              ) -> list[DeviceSpec]:
    """Kept for callers of the old name: :func:`parse_device_list`."""
    return parse_device_list(names, all_devices=all_devices, inventory=inventory)


def make_device(spec: DeviceSpec):
    """The :class:`~edgerun.devices.base.Device` for a spec (its class is named by the spec's class)."""
    module, _, cls = type(spec).device_class.partition(":")
    return getattr(importlib.import_module(module), cls)(spec)


def resolve_device(name_or_uri: str | DeviceSpec, inventory: str | os.PathLike | None = None):
    """Name, URI or spec -> an open-able :class:`Device` (connection happens on first use)."""
    spec = name_or_uri if isinstance(name_or_uri, DeviceSpec) else get_spec(name_or_uri, inventory)
    return make_device(spec)


__all__ = ["InventoryError", "DeviceSpec", "parse_uri", "load_inventory", "inventory_path", "get_spec",
           "get_specs", "parse_device_list", "make_device", "resolve_device", "transports", "LOCAL_SPEC_NAME"]
