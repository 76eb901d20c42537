"""Content-addressed deploys: push each file once, by sha256, then lay it out under its name.

Blobs live at ``WORK_DIR/blobs/<sha256>[.x]`` (``.x``: executable). A file whose blob is already
there is skipped -- the blob's name *is* its hash, and pushes are atomic (``.part`` + rename), so
a present blob is a complete one. The named view of a set of files is a directory of symlinks,
``WORK_DIR/sets/<hash of names and blobs>/NAME``, so a bundle's loader and libraries sit side by
side (``--library-path .`` works) while each byte crosses the link once.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from edgerun.devices.base import Device, DeviceError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SyncResult:
    dest: str                       # directory on the device holding the named files
    paths: dict[str, str]           # name -> path on the device (inside dest)
    pushed: list[str] = field(default_factory=list)   # names whose bytes were sent
    skipped: list[str] = field(default_factory=list)  # names already there (same sha256)

    def to_json(self) -> dict:
        return {"dest": self.dest, "paths": self.paths, "pushed": self.pushed, "skipped": self.skipped}


def _named(files: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike]) -> dict[str, Path]:
    if isinstance(files, Mapping):
        named = {str(k): Path(v) for k, v in files.items()}
    else:
        named = {}
        for f in files:
            p = Path(f)
            if p.name in named:
                raise ValueError(f"two files named {p.name!r}; pass a mapping name -> path")
            named[p.name] = p
    for name in named:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"file names must be plain names without '/', got {name!r}")
    return named


def sync_files(device: Device, files: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike],
               *, timeout: float = 60.0) -> SyncResult:
    """Make ``files`` (paths, or a mapping name -> local path) present on ``device``.

    Returns where they are; files whose sha256 blob is already on the device are not pushed.
    """
    named = _named(files)
    for name, path in named.items():
        if not path.is_file():
            raise DeviceError(f"cannot deploy {path}: no such file", device=device.name, stage="push")
    blobs = f"{device.work_dir.rstrip('/')}/blobs"
    keys = {name: sha256_file(p) + (".x" if os.access(p, os.X_OK) else "") for name, p in named.items()}
    remote = {name: f"{blobs}/{key}" for name, key in keys.items()}

    check = 'mkdir -p "$0" || exit 1; for f in "$@"; do [ -f "$f" ] && echo "$f"; done; exit 0'
    res = device.exec(["sh", "-c", check, blobs, *remote.values()], timeout=timeout, wrap=False)
    if res.rc != 0:
        raise DeviceError(f"cannot create {blobs}", device=device.name, stage="push", result=res,
                          hint="Check work_dir is writable on the device.")
    present = set(res.stdout_text.split())
    pushed, skipped, todo = [], [], []
    for name, path in named.items():
        if remote[name] in present:
            skipped.append(name)
        else:
            present.add(remote[name])  # the same bytes under two names cross once
            todo.append((path, remote[name]))
            pushed.append(name)
    device.push_many(todo)

    set_id = hashlib.sha256("\n".join(f"{n}\0{keys[n]}" for n in sorted(keys)).encode()).hexdigest()[:24]
    dest = f"{device.work_dir.rstrip('/')}/sets/{set_id}"
    links = " && ".join(f"ln -sfn {shlex.quote(remote[n])} {shlex.quote(dest + '/' + n)}" for n in named)
    script = f"mkdir -p {shlex.quote(dest)}" + (f" && {links}" if links else "")
    res = device.exec(["sh", "-c", script], timeout=timeout, wrap=False)
    if res.rc != 0:
        raise DeviceError(f"cannot lay out files in {dest}", device=device.name, stage="push", result=res)
    return SyncResult(dest=dest, paths={n: f"{dest}/{n}" for n in named}, pushed=pushed, skipped=skipped)
