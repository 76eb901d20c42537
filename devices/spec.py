"""What a device is configured as: one spec dataclass per transport, registered beside it.

A device is a URI plus options. The URI's scheme picks the transport; its address parts (host,
user, port, serial, port path) and every option -- an inventory key or a URI query key, the same
names -- are fields of that transport's spec class::

    @register_transport
    @dataclass(frozen=True)
    class SshSpec(DeviceSpec):
        transport: ClassVar[str] = "ssh"
        device_class: ClassVar[str] = "edgerun.devices.ssh:SshDevice"
        host: str | None = address()
        identity_file: str | None = option(path=True)
        ...

:func:`coerce_options` turns the strings of a URI query (or the TOML values of an inventory entry)
into the field types (``int``, ``float``, ``bool``, ``str``, ``tuple[str, ...]`` from a command
line, a ``Mapping[str, str]`` table), so no transport writes its own parsing. Validation is each
class's ``__post_init__`` (``ValueError``); :meth:`DeviceSpec.check_local` adds what can be checked
on this machine before any work (a key file exists, qemu knows the CPU).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping
from urllib.parse import SplitResult

from edgerun.devices.workdir import check_work_dir

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def option(default: Any = None, *, path: bool = False, uri: bool = True, default_factory: Any = None) -> Any:
    """A spec field that is an option (inventory key / URI query key).

    ``path``: ``~`` is expanded. ``uri=False``: accepted only from an inventory file, never from a
    URI's query (an option that runs a command must not come from a command line).
    """
    meta = {"option": True, "path": path, "uri": uri}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def address(default: Any = None) -> Any:
    """A spec field that comes from the URI itself (``ssh://USER@HOST:PORT``), not from an option."""
    return field(default=default, metadata={"option": False})


@dataclass(frozen=True)
class DeviceSpec:
    """What every transport shares: name and URI, plus the options every device takes."""

    transport: ClassVar[str] = "?"
    device_class: ClassVar[str] = ""  # "module:Class", imported when a device is made
    about: ClassVar[str] = ""         # one line for error messages and the README

    name: str
    uri: str
    target: str | None = option()
    work_dir: str | None = option()
    env: Mapping[str, str] = option(uri=False, default_factory=dict)
    threads: int | None = option()  # for the runner; devices only carry it
    wrapper: tuple[str, ...] = option((), uri=False)
    connect_timeout: float = option(10.0)
    connect_retries: int = option(2)  # extra attempts on a transient connect failure (never on exec)
    probe_timeout: float = option(30.0)
    cleanup: bool = option(False)     # remove work_dir on close() -- only one edgerun created

    # -- URIs
    @classmethod
    def accepts(cls, scheme: str) -> bool:
        """Whether a URI with this scheme is a device of this transport."""
        return scheme == cls.transport

    @classmethod
    def from_uri(cls, parts: SplitResult) -> dict[str, Any]:
        """The address fields in a URI (``host``, ``serial``...). A URI may carry no address."""
        if parts.netloc or parts.path:
            raise ValueError(f"a {cls.transport} URI takes no address: {cls.transport}://")
        return {}

    # -- validation
    def __post_init__(self):
        if not self.name:
            raise ValueError("a device needs a name")
        if self.work_dir is not None:
            object.__setattr__(self, "work_dir", check_work_dir(self.work_dir))
        if not isinstance(self.env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ValueError("env must be a table of string keys to string values")
        bad = [k for k in self.env if not _ENV_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"env: {bad[0]!r} is not an environment variable name (letters, digits and _, not "
                             "starting with a digit)")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {self.threads!r}")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {self.connect_timeout!r}")
        if self.probe_timeout <= 0:
            raise ValueError(f"probe_timeout must be > 0, got {self.probe_timeout!r}")
        if not 0 <= self.connect_retries <= 10:
            raise ValueError(f"connect_retries must be 0..10, got {self.connect_retries!r}")

    def check_local(self) -> None:
        """What can be checked on this machine before any work; ``ValueError`` says what is wrong."""

    def expand(self) -> list["DeviceSpec"]:
        """The devices this spec stands for when a device list is parsed: itself, or -- a device source such as
        ``labgrid://?tag=K=V`` -- one spec per device it finds (each with a URI that resolves back to it)."""
        return [self]

    # -- identity and output
    @property
    def ref(self) -> str:
        """The string that resolves back to this spec: its inventory name, or the URI it was given as."""
        return self.uri if "://" in self.name else self.name

    def identity(self) -> tuple:
        """Two specs with the same identity are the same device (same transport, address, options)."""
        return (self.transport,) + tuple(
            _hashable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("name", "uri"))

    def to_json(self) -> dict:
        """The fields that say something: name, uri, transport, and every non-default option."""
        out: dict[str, Any] = {"name": self.name, "uri": self.uri, "transport": self.transport}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name not in out and value != default:
                out[f.name] = dict(value) if isinstance(value, Mapping) else \
                    list(value) if isinstance(value, tuple) else value
        return out


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    return value


# ----------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[DeviceSpec]] = {}


def register_transport(cls: type[DeviceSpec]) -> type[DeviceSpec]:
    """Class decorator: make ``cls`` the spec of its transport (one per transport name)."""
    if not (isinstance(cls, type) and issubclass(cls, DeviceSpec)) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a DeviceSpec dataclass")
    if cls.transport in _REGISTRY and _REGISTRY[cls.transport] is not cls:
        raise ValueError(f"transport {cls.transport!r} is already registered by {_REGISTRY[cls.transport].__name__}")
    _REGISTRY[cls.transport] = cls
    return cls


def registered() -> dict[str, type[DeviceSpec]]:
    return dict(_REGISTRY)


def spec_class_for_scheme(scheme: str) -> type[DeviceSpec] | None:
    for cls in _REGISTRY.values():
        if cls.accepts(scheme):
            return cls
    return None


# ---------------------------------------------------------------------------------- coercion
def option_fields(cls: type[DeviceSpec]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("option")}


def coerce_options(cls: type[DeviceSpec], values: Mapping[str, Any], *, from_uri: bool) -> dict[str, Any]:
    """URI query strings or inventory values -> typed field values of ``cls``. ``ValueError`` names the key."""
    fields = option_fields(cls)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            raise ValueError(_unknown_option(cls, key))
        if from_uri and not f.metadata.get("uri", True):
            raise ValueError(f"{key} is not accepted in a device URI (it would let a command line run a command "
                             f"or set the program's environment); put {key} = ... in an inventory entry")
        value = _coerce(hints[key], value, key)
        if f.metadata.get("path") and isinstance(value, str):
            value = os.path.expanduser(value)
        out[key] = value
    return out


def _unknown_option(cls: type[DeviceSpec], key: str) -> str:
    known = sorted(option_fields(cls))
    owners = sorted(t for t, c in _REGISTRY.items() if c is not cls and key in option_fields(c))
    addr = {f.name for f in dataclasses.fields(cls) if f.metadata.get("option") is False}
    msg = f"unknown option {key!r} for {cls.transport}"
    if key in addr:
        msg += f" ({key} is part of the URI: {cls.about or cls.transport + '://'})"
    elif owners:
        msg += f" ({key} applies to {' and '.join(owners)} devices only)"
    else:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            msg += f" (did you mean {close[0]}?)"
    return msg + f"; known: {', '.join(known)}"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(args[0], value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    if origin is tuple:  # a command line: "qemu-aarch64 -cpu cortex-a76" or ["qemu-aarch64", ...]
        if isinstance(value, str):
            return tuple(shlex.split(value))
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{key} must be a command line string or a list of strings")
    if origin in (collections.abc.Mapping, dict) or tp in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a table, e.g. {key} = {{ NAME = \"value\" }}")
        return {str(k): str(v) for k, v in value.items()}
    raise TypeError(f"option {key}: no coercion for type {tp!r}")  # a spec class declares an odd type


def check_no_leading_dash(what: str, value: str | None) -> None:
    """A host, user or serial given to a client program must not read as one of its options."""
    if value and value.startswith("-"):
        raise ValueError(f"{what} {value!r} starts with '-': a client program would read it as an option")


__all__ = ["DeviceSpec", "option", "address", "register_transport", "registered", "spec_class_for_scheme",
           "coerce_options", "option_fields", "check_no_leading_dash"]
