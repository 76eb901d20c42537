"""edgerun's labgrid client: lists places and holds one, run in a Python that has labgrid.

Run by path, not imported by edgerun (it imports only the standard library and labgrid): labgrid may
live in its own venv (scripts/setup builds ``.venv/lab``: labgrid brings ``pyserial-labgrid``, a fork
that replaces pyserial's ``serial`` package), so :mod:`edgerun.devices.labgrid` starts this file with
that venv's interpreter and reads JSON lines from it.

``places --coordinator ADDR [--place NAME] [--tag KEY=VALUE]...`` prints one JSON object: every place
that matches (by exact name; or having all the tags), with its tags, holder and the resources its
matches select (exporter, group, class, name, params, avail).

``hold --coordinator ADDR --place NAME --wait SECONDS`` acquires the place (a busy one is polled until
``SECONDS`` have passed; 0 fails at once naming the holder) and prints ``{"event": "acquired", ...}``
with its resources; then it holds the place until its stdin ends or says ``release`` (edgerun closing
the device, or edgerun dying: even a SIGKILLed edgerun closes the pipe) or SIGTERM, and releases it.
While holding it prints ``{"event": "lost", ...}`` once if a resource of the place disappears or is no
longer available (its exporter stopped). labgrid's acquisitions never expire on their own: this
process is what keeps a dead edgerun from leaving a place locked; it runs in its own session so a
signal to edgerun's process group does not reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _place_resources(session, place) -> list[dict]:
    out = []
    for exporter, groups in sorted(session.resources.items()):
        for group_name, group in sorted(groups.items()):
            for resource_name, resource in sorted(group.items()):
                path = (exporter, group_name, resource.data.get("cls", ""), resource_name)
                match = place.getmatch(path)
                if match is None:
                    continue
                params = {k: v for k, v in (resource.data.get("params") or {}).items() if k != "extra"}
                out.append({"exporter": exporter, "group": group_name, "cls": resource.data.get("cls", ""),
                            "name": match.rename or resource_name, "params": params,
                            "avail": bool(resource.data.get("avail", False)),
                            "acquired": resource.data.get("acquired")})
    return out


def _describe(session, place) -> dict:
    return {"name": place.name, "tags": dict(place.tags), "acquired": place.acquired,
            "changed": place.changed, "comment": place.comment,
            "resources": _place_resources(session, place)}


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"a tag is KEY=VALUE, got {item!r}")
        tags[key] = value
    return tags


def _session(address: str):
    from labgrid.remote.client import start_session

    return start_session(address)


def cmd_places(args) -> int:
    session = _session(args.coordinator)
    tags = _parse_tags(args.tag)
    found = []
    for name, place in sorted(session.places.items()):
        if args.place and name != args.place:
            continue
        if any(place.tags.get(k) != v for k, v in tags.items()):
            continue
        found.append(_describe(session, place))
    emit({"places": found, "me": f"{session.gethostname()}/{session.getuser()}"})
    session.loop.run_until_complete(session.stop())
    return 0


def cmd_hold(args) -> int:
    import grpc
    from labgrid.remote.generated import labgrid_coordinator_pb2

    session = _session(args.coordinator)
    loop = session.loop
    me = f"{session.gethostname()}/{session.getuser()}"
    done = asyncio.Event()

    def stop_soon(*_):
        loop.call_soon_threadsafe(done.set)

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "release":
                break
        stop_soon()

    signal.signal(signal.SIGTERM, stop_soon)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # edgerun decides; Ctrl-C closes our stdin
    threading.Thread(target=read_stdin, daemon=True).start()

    async def acquire() -> bool:
        deadline = time.monotonic() + args.wait
        told = False
        while not done.is_set():
            place = session.places.get(args.place)
            if place is None:
                emit({"event": "error", "kind": "no-place", "message": f"no place {args.place!r} on the coordinator",
                      "places": sorted(session.places)})
                return False
            if place.acquired is None:
                try:
                    await session.stub.AcquirePlace(labgrid_coordinator_pb2.AcquirePlaceRequest(placename=place.name))
                    await session.sync_with_coordinator()
                    return True
                except grpc.aio.AioRpcError as exc:
                    raced = exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "already acquired" in (exc.details() or "")
                    if not raced:
                        emit({"event": "error", "kind": "acquire", "message": exc.details(),
                              "resources": _place_resources(session, place)})
                        return False
                    await session.sync_with_coordinator()
                    place = session.places.get(args.place)
            if place is not None and place.acquired is not None:
                if time.monotonic() >= deadline:
                    emit({"event": "busy", "holder": place.acquired, "me": me, "since": place.changed,
                          "waited": args.wait})
                    return False
                if not told:
                    emit({"event": "waiting", "holder": place.acquired, "me": me})
                    told = True
            try:
                await asyncio.wait_for(done.wait(), timeout=min(0.25, max(0.01, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                pass
        emit({"event": "cancelled"})  # stdin ended (edgerun gone or closing) while waiting
        return False

    async def hold() -> int:
        if not await acquire():
            return 3
        place = session.places[args.place]
        emit({"event": "acquired", "place": place.name, "me": me, "tags": dict(place.tags),
              "resources": _place_resources(session, place)})
        lost = False
        while not done.is_set():
            if not lost:
                place = session.places.get(args.place)
                gone = []
                if place is None or place.acquired != me:
                    gone.append(f"the place is no longer acquired by {me}")
                else:
                    for path in place.acquired_resources:
                        exporter, group, _cls, name = path
                        res = session.resources.get(exporter, {}).get(group, {}).get(name)
                        if res is None:
                            gone.append(f"{'/'.join(path)} is gone (exporter {exporter} disconnected?)")
                        elif not res.data.get("avail", False):
                            gone.append(f"{'/'.join(path)} is not available")
                if gone:
                    emit({"event": "lost", "reasons": gone})
                    lost = True
            try:
                await asyncio.wait_for(done.wait(), timeout=0.25)
            except asyncio.TimeoutError:
                pass
        try:
            await session.stub.ReleasePlace(labgrid_coordinator_pb2.ReleasePlaceRequest(placename=args.place,
                                                                                        fromuser=me))
            emit({"event": "released", "place": args.place})
        except grpc.aio.AioRpcError as exc:
            emit({"event": "error", "kind": "release", "message": exc.details()})
            return 4
        return 0

    try:
        rc = loop.run_until_complete(hold())
    finally:
        try:
            loop.run_until_complete(session.stop())
        except Exception:  # noqa: BLE001 - the coordinator may be gone; the exit status says what happened
            pass
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labgrid_agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("places")
    p.add_argument("--coordinator", required=True)
    p.add_argument("--place")
    p.add_argument("--tag", action="append", default=[])
    h = sub.add_parser("hold")
    h.add_argument("--coordinator", required=True)
    h.add_argument("--place", required=True)
    h.add_argument("--wait", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        return cmd_places(args) if args.cmd == "places" else cmd_hold(args)
    except Exception as exc:  # noqa: BLE001 - one JSON line for edgerun, whatever labgrid raised
        emit({"event": "error", "kind": type(exc).__name__, "message": str(exc)})
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
