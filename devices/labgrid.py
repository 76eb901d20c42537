"""``labgrid://PLACE?coordinator=HOST:PORT``: a place of a labgrid lab, as an edgerun device.

A device source, not a transport: the place's resources feed the transports edgerun has (labgrid's own
resource/driver split) --

* ``NetworkService`` (address, username, port) -> :mod:`ssh <edgerun.devices.ssh>` (key auth only: a
  password in the resource is not used; give ``identity_file``/``known_hosts`` in the URI or inventory);
* ``NetworkSerialPort`` (host, port, speed, protocol ``rfc2217``/``raw``) -> :mod:`serial
  <edgerun.devices.serial_device>` through pyserial's ``rfc2217://`` / ``socket://`` URLs. An exporter
  publishes a ``RawSerialPort`` or ``USBSerialPort`` of its config as a ``NetworkSerialPort`` (ser2net), so
  this covers them; a ``RawSerialPort`` seen as such (a client on the exporter's host) opens its ``port``;
* ``AndroidDevice`` (serial, host, port) -> :mod:`adb <edgerun.devices.adb>` with ``server=HOST:PORT``.
  labgrid has no adb resource and its exporter takes no plug-in classes, but it exports a class it has no
  handler for as a plain network resource, params as written: edgerun's convention is a resource named
  ``AndroidDevice`` in the exporter config (``serial`` = the phone's adb serial, ``host`` = where the adb
  server it is plugged into listens, ``port`` default 5037; without ``host``, the local adb server).

When a place has several, ``via=ssh|serial|adb`` picks one; else ssh, then adb, then serial.

``labgrid://?tag=KEY=VALUE[;KEY=VALUE]`` is every place with those tags, expanded when the device list is
parsed (:meth:`LabgridSpec.expand`). The coordinator comes from ``coordinator=``, else ``$LG_COORDINATOR``
(as labgrid's client reads it), else labgrid's default ``127.0.0.1:20408``.

Opening the device acquires (locks) the place; closing it releases it. A busy place fails at once with
:class:`PlaceBusy` naming the holder, or is waited for up to ``wait=SECONDS`` (or ``--wait``:
:func:`set_default_wait`). The lock is held by a small
client process (:mod:`labgrid_agent <edgerun.devices.labgrid_agent>`, run with a Python that has labgrid)
that releases the place when edgerun closes the device, on Ctrl-C, and when edgerun dies -- even by SIGKILL
its pipe closes. labgrid itself never expires an acquired place; if edgerun *and* that process are both
killed (kill -9 of both, a host crash), the place stays acquired by ``HOST/USER`` until someone runs
``labgrid-client -p PLACE release`` (``--kick`` from another user).

A place whose resources disappear while edgerun holds it (its exporter stopped) is lost: what runs on it is
stopped and every later operation fails with :class:`TransportDropped` (a device error), so a bench fails
only that place's cells.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping
from urllib.parse import quote, unquote, urlencode

from edgerun.core.errors import (DeviceError, DeviceUnreachable, EnvironmentProblem, ExecCancelled,
                                 TransportDropped)
from edgerun.core.text import sanitize_text
from edgerun.devices.base import Device
from edgerun.devices.spec import DeviceSpec, address, option, register_transport

log = logging.getLogger("edgerun.devices")

AGENT = Path(__file__).with_name("labgrid_agent.py")
DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid's own default
_PLACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # labgrid's place names: word characters, '-' and '.'
_TAG = re.compile(r"[a-z][a-z0-9_]*=[a-z0-9_]+")   # labgrid's TAG_KEY / TAG_VAL
VIAS = ("ssh", "adb", "serial")
_COMMON = ("target", "work_dir", "env", "threads", "wrapper", "connect_timeout", "connect_retries", "probe_timeout",
           "cleanup")
INSTALL_HINT = ("Install the lab extra (pip install 'edgerun[lab]', labgrid 26.0), or run scripts/setup, which "
                "builds labgrid into its own venv (.venv/lab); or set EDGERUN_LABGRID_PYTHON to a Python that "
                "has labgrid.")


_default_wait = 0.0


def set_default_wait(seconds: float) -> None:
    """How long a labgrid:// device without ``wait=`` waits for a busy place, in this process (``--wait``)."""
    global _default_wait
    if not 0 <= seconds <= 7 * 86400:
        raise ValueError(f"wait must be 0..604800 seconds, got {seconds!r}")
    _default_wait = float(seconds)


class PlaceBusy(DeviceError):
    """The labgrid place is acquired by someone else (exit 8, a device failure)."""


def lab_python() -> str:
    """A Python that can import labgrid: ``$EDGERUN_LABGRID_PYTHON``, this one (the ``lab`` extra), or the
    venv scripts/setup builds beside edgerun's (``<venv>/lab``). :class:`EnvironmentProblem` if none."""
    env = os.environ.get("EDGERUN_LABGRID_PYTHON")
    if env:
        if not os.access(env, os.X_OK):
            raise EnvironmentProblem(f"EDGERUN_LABGRID_PYTHON={env} is not an executable Python", stage="labgrid",
                                     hint=INSTALL_HINT)
        return env
    if importlib.util.find_spec("labgrid") is not None:
        return sys.executable
    beside = Path(sys.prefix) / "lab" / "bin" / "python"
    if beside.exists():
        return str(beside)
    raise EnvironmentProblem("labgrid is not installed: labgrid:// devices need its client", stage="labgrid",
                             hint=INSTALL_HINT)


def _agent(args: list[str], **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the lab venv must not see edgerun's path
    env["PYTHONUNBUFFERED"] = "1"
    # -I: isolated, so the agent's own folder (which holds this labgrid.py) is not on sys.path before labgrid
    return subprocess.Popen([lab_python(), "-I", str(AGENT), *args], env=env, text=True, **kw)


@register_transport
@dataclass(frozen=True)
class LabgridSpec(DeviceSpec):
    """``labgrid://PLACE?coordinator=HOST:PORT`` or ``labgrid://?tag=KEY=VALUE`` (every matching place)."""

    transport: ClassVar[str] = "labgrid"
    device_class: ClassVar[str] = "edgerun.devices.labgrid:LabgridDevice"
    about: ClassVar[str] = "labgrid://PLACE?coordinator=HOST:PORT"

    place: str | None = address()
    coordinator: str | None = option()
    tag: str | None = option()             # KEY=VALUE[;KEY=VALUE]: every place with these tags
    wait: float | None = option()          # seconds to wait for a busy place (default: --wait's, else 0: fail at once)
    via: str | None = option()             # ssh | adb | serial, when the place has several
    identity_file: str | None = option(path=True)   # for a NetworkService (ssh)
    known_hosts: str | None = option(path=True)
    accept_new_host_key: bool = option(False)

    @classmethod
    def from_uri(cls, parts) -> dict:
        if parts.path not in ("", "/") or "@" in parts.netloc or ":" in parts.netloc:
            raise ValueError("a labgrid URI names a place: labgrid://PLACE?coordinator=HOST:PORT, or "
                             "labgrid://?tag=KEY=VALUE for every place with a tag")
        return {"place": unquote(parts.netloc)} if parts.netloc else {}

    def __post_init__(self):
        super().__post_init__()
        if self.place is not None and not _PLACE.fullmatch(self.place):
            raise ValueError(f"{self.place!r} is not a labgrid place name (letters, digits, '_', '-', '.')")
        if (self.place is None) == (self.tag is None):
            raise ValueError("give a place (labgrid://PLACE) or tag=KEY=VALUE (every place with it), one of them")
        if self.tag is not None:
            bad = [t for t in self.tag.split(";") if not _TAG.fullmatch(t)]
            if bad:
                raise ValueError(f"tag {bad[0]!r} is not KEY=VALUE as labgrid's tags are (lower-case letters, "
                                 "digits and '_'); several: tag=board=rpi5;lab=a (a comma separates devices)")
        if self.coordinator is None:
            object.__setattr__(self, "coordinator", os.environ.get("LG_COORDINATOR") or DEFAULT_COORDINATOR)
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+", self.coordinator) or self.coordinator.startswith("-"):
            raise ValueError(f"coordinator {self.coordinator!r} is not HOST:PORT")
        if self.wait is not None and not 0 <= self.wait <= 7 * 86400:
            raise ValueError(f"wait must be 0..604800 seconds, got {self.wait!r}")
        if self.via is not None and self.via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}, got {self.via!r}")

    def check_local(self) -> None:
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise ValueError(f"identity_file {self.identity_file} does not exist")
        if self.known_hosts and not os.path.isfile(self.known_hosts) and not self.accept_new_host_key:
            raise ValueError(f"known_hosts {self.known_hosts} does not exist")

    def tags(self) -> dict[str, str]:
        return dict(t.split("=", 1) for t in self.tag.split(";")) if self.tag else {}

    def expand(self) -> list["LabgridSpec"]:
        """A tag URI: one spec per place of the coordinator with those tags (asked now); a place: itself."""
        if self.place is not None:
            return [self]
        found = list_places(self.coordinator, tags=self.tags())
        if not found:
            raise DeviceError(f"no place on the labgrid coordinator {self.coordinator} has the tag(s) {self.tag}",
                              device=self.ref, stage="connect",
                              hint="`labgrid-client places` lists them; `labgrid-client -p PLACE set-tags "
                                   "KEY=VALUE` tags one.")
        out = []
        for place in found:
            query = {k: v for k, v in _uri_query(self.uri).items() if k != "tag"}
            query["coordinator"] = self.coordinator
            uri = f"labgrid://{quote(place['name'], safe='')}?{urlencode(query, safe=':/')}"
            out.append(dataclasses.replace(self, name=uri.split("?", 1)[0], uri=uri, place=place["name"], tag=None))
        return out


def _uri_query(uri: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))


def _agent_failure(coordinator: str, device: str, out: str, err: str, rc: int | None) -> DeviceError:
    tail = sanitize_text((err or "").strip().splitlines()[-1] if (err or "").strip() else "")
    for line in (out or "").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "error":
            tail = sanitize_text(str(ev.get("message")))
    return DeviceUnreachable(f"cannot talk to the labgrid coordinator {coordinator}" + (f": {tail}" if tail else
                             f" (its client exited {rc})"), device=device, stage="connect",
                             hint="Is labgrid-coordinator running there (and LG_COORDINATOR or coordinator= right)?")


def list_places(coordinator: str, *, place: str | None = None, tags: Mapping[str, str] | None = None,
                timeout: float = 30.0) -> list[dict]:
    """The coordinator's places (by name, or all with ``tags``): name, tags, holder, resources."""
    args = ["places", "--coordinator", coordinator] + (["--place", place] if place else [])
    for k, v in (tags or {}).items():
        args += ["--tag", f"{k}={v}"]
    proc = _agent(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode == 0:
        try:
            return list(json.loads(out.splitlines()[-1])["places"])
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    raise _agent_failure(coordinator, f"labgrid coordinator {coordinator}", out, err, proc.returncode)


# ------------------------------------------------------------------------------------------- mapping
def transport_spec(spec: LabgridSpec, resources: list[dict]) -> tuple[DeviceSpec, dict]:
    """The ssh/serial/adb spec a place's resources give (and the resource used). ``ValueError`` says why not."""
    from edgerun.devices.adb import AdbSpec
    from edgerun.devices.serial_device import SerialSpec
    from edgerun.devices.ssh import SshSpec

    by_via: dict[str, list[dict]] = {"ssh": [], "adb": [], "serial": []}
    for r in resources:
        via = {"NetworkService": "ssh", "AndroidDevice": "adb", "NetworkSerialPort": "serial",
               "RawSerialPort": "serial"}.get(r.get("cls"))
        if via:
            by_via[via].append(r)
    order = [spec.via] if spec.via else list(VIAS)
    chosen = next((v for v in order if by_via[v]), None)
    have = ", ".join(f"{r.get('cls')} {r.get('name')}" for r in resources) or "none"
    if chosen is None:
        want = {"ssh": "NetworkService", "adb": "AndroidDevice", "serial": "NetworkSerialPort/RawSerialPort"}
        what = want[spec.via] if spec.via else "NetworkService, NetworkSerialPort/RawSerialPort or AndroidDevice"
        raise ValueError(f"place {spec.place} has no {what} resource edgerun can run through (it has: {have})")
    if len(by_via[chosen]) > 1:
        raise ValueError(f"place {spec.place} has {len(by_via[chosen])} {chosen} resources "
                         f"({', '.join(r['name'] for r in by_via[chosen])}); edgerun drives one device per place")
    res = by_via[chosen][0]
    p = dict(res.get("params") or {})
    common = {k: getattr(spec, k) for k in _COMMON}
    name = spec.name
    if chosen == "ssh":
        host, user, port = str(p.get("address") or ""), p.get("username"), int(p.get("port") or 22)
        netloc = f"[{host}]" if ":" in host else host
        out = SshSpec(name=name, uri=f"ssh://{quote(str(user or ''))}{'@' if user else ''}{netloc}:{port}",
                      host=host, user=str(user) if user else None, port=port, identity_file=spec.identity_file,
                      known_hosts=spec.known_hosts, accept_new_host_key=spec.accept_new_host_key, **common)
    elif chosen == "adb":
        serial = str(p.get("serial") or "")
        if not serial:
            raise ValueError(f"place {spec.place}: its AndroidDevice resource {res['name']} has no serial")
        server = f"{p['host']}:{int(p.get('port') or 5037)}" if p.get("host") else None
        out = AdbSpec(name=name, uri=f"adb://{quote(serial, safe='')}" + (f"?server={server}" if server else ""),
                      serial=serial, server=server, **common)
    else:
        if res.get("cls") == "RawSerialPort" and not p.get("host"):
            path = str(p.get("port") or "")
        else:
            proto = str(p.get("protocol") or "rfc2217")
            if proto not in ("rfc2217", "raw"):
                raise ValueError(f"place {spec.place}: serial protocol {proto!r} (edgerun speaks rfc2217 and raw)")
            # ign_set_control: ser2net (what labgrid's exporter runs) does not answer RFC 2217's SET_CONTROL as
            # pyserial waits for (labgrid's pyserial fork patches the same thing)
            path = (f"rfc2217://{p.get('host')}:{int(p.get('port') or 0)}?ign_set_control" if proto == "rfc2217"
                    else f"socket://{p.get('host')}:{int(p.get('port') or 0)}")
        out = SerialSpec(name=name, uri=f"serial://{path}", path=path, baud=int(p.get("speed") or 115200), **common)
    return out, res


# -------------------------------------------------------------------------------------------- device
class LabgridDevice(Device):
    """A held labgrid place driving the ssh/serial/adb device its resources give. Acquired on first use."""

    transport = "labgrid"

    def __init__(self, spec: LabgridSpec):
        super().__init__(spec)
        if spec.place is None:
            raise DeviceError(f"{spec.ref} names every place with tag(s) {spec.tag}, not one device", device=spec.ref,
                              stage="connect", hint="Give it to --device/--devices (each place becomes a device) or "
                                                    "name one place: labgrid://PLACE.")
        self._open_lock = threading.Lock()
        self._agent_proc: subprocess.Popen | None = None
        self._agent_err = None
        self._inner: Device | None = None
        self._lost: list[str] | None = None
        self.resource: dict | None = None   # the resource the device runs through (exporter, cls, params)
        self.holder: str | None = None
        self.wait = float(spec.wait if spec.wait is not None else _default_wait)

    # -- the place
    def _ensure(self, stage: str) -> Device:
        self._check_open(stage)
        with self._open_lock:
            if self._inner is None:
                self._acquire()
        if self._lost:
            raise self._lost_error(stage)
        return self._inner

    def _acquire(self) -> None:
        spec: LabgridSpec = self.spec
        if self.cancelled:
            raise self._error(ExecCancelled, f"place {spec.place} not acquired: the run was cancelled", "connect")
        self._agent_err = tempfile.TemporaryFile(mode="w+")
        proc = self._agent_proc = _agent(["hold", "--coordinator", spec.coordinator, "--place", spec.place,
                                          "--wait", repr(self.wait)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._agent_err, start_new_session=True)
        out = []
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "waiting":
                log.warning("labgrid place %s is acquired by %s: waiting up to %g s", spec.place,
                            sanitize_text(str(ev.get("holder"))), self.wait)
            elif kind == "acquired":
                self.holder = ev.get("me")
                self._start(ev.get("resources") or [])
                return
            elif kind == "busy":
                self._stop_agent()
                raise self._busy(ev)
            elif kind == "cancelled":
                self._stop_agent()
                raise self._error(ExecCancelled, f"place {spec.place} not acquired: the run was cancelled", "connect")
            elif kind == "error" and ev.get("kind") == "no-place":
                self._stop_agent()
                known = ", ".join(ev.get("places") or []) or "none"
                raise self._error(DeviceUnreachable, f"the labgrid coordinator {spec.coordinator} has no place "
                                  f"{spec.place!r} (places: {sanitize_text(known)})", "connect",
                                  hint="`labgrid-client places` lists them.")
        self._stop_agent()
        self._agent_err.seek(0)
        raise _agent_failure(spec.coordinator, self.name, "".join(out), self._agent_err.read(), proc.returncode)

    def _busy(self, ev: dict) -> PlaceBusy:
        spec: LabgridSpec = self.spec
        holder, me = sanitize_text(str(ev.get("holder"))), str(ev.get("me"))
        waited = f" after waiting {self.wait:g} s" if self.wait else ""
        mine = (" That is this user on this host: another edgerun, or a labgrid-client session; if none is "
                f"running, `labgrid-client -p {spec.place} release` frees it.") if holder == me else ""
        return PlaceBusy(f"labgrid place {spec.place} is acquired by {holder}{waited}", device=self.name,
                         stage="connect",
                         hint=f"Wait for it with --wait SECONDS (profile, bench) or wait=SECONDS in the "
                              f"URI (labgrid://{spec.place}?wait=600), or pick another place.{mine}")

    def _start(self, resources: list[dict]) -> None:
        from edgerun.devices.inventory import make_device

        try:
            inner_spec, self.resource = transport_spec(self.spec, resources)
            inner_spec.check_local()
        except ValueError as exc:
            self._stop_agent()
            raise self._error(DeviceError, str(exc), "connect",
                              hint="Fix the place's matches or the exporter config (README: Device labs).") from None
        self._inner = make_device(inner_spec)
        threading.Thread(target=self._watch, name=f"labgrid-{self.spec.place}", daemon=True).start()
        log.info("labgrid place %s acquired: %s via %s (exporter %s)", self.spec.place, inner_spec.uri,
                 self.resource.get("cls"), self.resource.get("exporter"))

    def _watch(self) -> None:
        proc = self._agent_proc
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "lost" and self._lost is None:
                self._lost = [sanitize_text(str(r)) for r in ev.get("reasons") or []] or ["resources gone"]
                log.warning("labgrid place %s lost: %s", self.spec.place, "; ".join(self._lost))
                if self._inner is not None:
                    self._inner.cancel()  # what runs there is stopped; its exec raises, mapped below

    def _lost_error(self, stage: str, result=None) -> TransportDropped:
        return self._error(TransportDropped, f"labgrid place {self.spec.place} was lost: {'; '.join(self._lost)}",
                           stage, result=result,
                           hint="Its exporter stopped or the resource went away; the place's other cells fail, the "
                                "other places' results are kept. Rerun once `labgrid-client -p PLACE show` lists "
                                "its resources again.")

    def _stop_agent(self, timeout: float = 15.0) -> None:
        proc, self._agent_proc = self._agent_proc, None
        if proc is None:
            return
        try:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.write("release\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("labgrid place %s: its client did not release it in %g s; stopping it", self.spec.place,
                        timeout)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._inner is not None and proc.returncode not in (0, None):  # it held the place
            log.warning("labgrid place %s: release failed (client exit %s); `labgrid-client -p %s show` says "
                        "whether it is still acquired", self.spec.place, proc.returncode, self.spec.place)

    # -- lifecycle
    def __enter__(self):
        self._ensure("connect")
        return self

    def close(self) -> None:
        try:
            if self._inner is not None:
                try:
                    self._inner.close()
                except DeviceError as exc:
                    log.warning("%s", exc.paragraph())
        finally:
            self._stop_agent()
            if self._agent_err is not None:
                self._agent_err.close()
                self._agent_err = None
            super().close()

    def cancel(self) -> None:
        super().cancel()
        if self._inner is not None:
            self._inner.cancel()
        elif self._agent_proc is not None and self._agent_proc.stdin and not self._agent_proc.stdin.closed:
            try:  # still waiting for the place: stop waiting
                self._agent_proc.stdin.close()
            except OSError:
                pass

    # -- the device, through the transport the place gives
    @property
    def work_dir(self) -> str:
        return self._ensure("connect").work_dir

    @property
    def wrapper(self) -> list[str]:
        return list(self.spec.wrapper)

    def _mapped(self, stage: str, fn, *args, **kw):
        inner = self._ensure(stage)
        try:
            return fn(inner, *args, **kw)
        except ExecCancelled as exc:
            if self._lost and not self.cancelled:
                raise self._lost_error(stage, exc.result) from exc
            raise
        except DeviceError:
            if self._lost:
                raise self._lost_error(stage) from None
            raise

    def exec(self, argv, *, timeout, env=None, cwd=None, wrap=True, on_stdout=None):
        return self._mapped("exec", lambda d: d.exec(argv, timeout=timeout, env=env, cwd=cwd, wrap=wrap,
                                                     on_stdout=on_stdout))

    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None):  # pragma: no cover - exec is delegated whole
        raise NotImplementedError

    def push(self, local, remote) -> None:
        self._mapped("push", lambda d: d.push(local, remote))

    def push_many(self, pairs) -> None:
        self._mapped("push", lambda d: d.push_many(pairs))

    def pull(self, remote, local) -> None:
        self._mapped("pull", lambda d: d.pull(remote, local))

    def info(self):
        info = self._mapped("probe", lambda d: d.info())
        exporter = (self.resource or {}).get("exporter")   # the coordinator's word: untrusted text into the record
        return dataclasses.replace(info, lab_place=self.spec.place,
                                   lab_exporter=sanitize_text(str(exporter)) if exporter is not None else None)

    def prepare_work_dir(self, *, timeout: float = 60.0) -> str:
        return self._mapped("push", lambda d: d.prepare_work_dir(timeout=timeout))

    def file_digests(self, paths, *, timeout: float = 60.0):
        return self._mapped("push", lambda d: d.file_digests(paths, timeout=timeout))

    def link_files(self, dest, links, *, timeout: float = 60.0) -> None:
        self._mapped("push", lambda d: d.link_files(dest, links, timeout=timeout))

    def __getattr__(self, name: str) -> Any:
        # anything else a transport offers (SerialDevice.connect ...): the inner device's, once acquired
        if name.startswith("_") or name in ("spec", "name"):
            raise AttributeError(name)
        return getattr(self._ensure("connect"), name)


__all__ = ["LabgridSpec", "LabgridDevice", "PlaceBusy", "list_places", "transport_spec", "lab_python",
           "set_default_wait"]
