"""Content-addressed deploys: push each file once, by sha256, then lay it out under its name.

Blobs live at ``WORK_DIR/blobs/<sha256>[.x]`` (``.x``: executable). A blob's *name* proves
nothing -- anyone who could write the directory could have put other bytes there, and a
half-written file from an older edgerun may sit under the right name -- so a present blob is
checked before it is skipped: by sha256 on the device when it has ``sha256sum``, else by size and
POSIX ``cksum`` (a CRC: catches corruption, not a forger -- :attr:`SyncResult.verified_by` says
which). A blob that does not match is pushed again. Before anything is trusted, the work dir must
be private to the device's user (:meth:`~edgerun.devices.base.Device.prepare_work_dir`).

The named view of a set of files is a directory of symlinks,
``WORK_DIR/sets/<hash of names and blobs>/NAME``, so a bundle's loader and libraries sit side by
side (``--library-path .`` works) while each byte crosses the link once.
"""

from __future__ import annotations

import hashlib
import os
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


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def posix_cksum(path: str | os.PathLike) -> str:
    """``"SIZE CRC"`` as POSIX ``cksum`` computes it (CRC-32/CKSUM over the bytes, then the length)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            size += len(block)
            for b in block:
                crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ b]
    n = size
    while n:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ (n & 0xFF)]
        n >>= 8
    return f"{size} {(~crc) & 0xFFFFFFFF}"


@dataclass(frozen=True)
class SyncResult:
    dest: str                       # directory on the device holding the named files
    paths: dict[str, str]           # name -> path on the device (inside dest)
    pushed: list[str] = field(default_factory=list)   # names whose bytes were sent
    skipped: list[str] = field(default_factory=list)  # names already there, verified
    verified_by: str | None = None  # how present blobs were checked: "sha256" | "size+cksum" (None: none were)
    replaced: list[str] = field(default_factory=list)  # names whose blob was there but did not match: re-pushed

    def to_json(self) -> dict:
        return {"dest": self.dest, "paths": self.paths, "pushed": self.pushed, "skipped": self.skipped,
                "verified_by": self.verified_by, "replaced": self.replaced}


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

    Returns where they are; a file whose blob is already on the device *and matches* is not
    pushed again (see the module docstring for how it is checked).
    """
    named = _named(files)
    for name, path in named.items():
        if not path.is_file():
            raise DeviceError(f"cannot deploy {path}: no such file", device=device.name, stage="push")
    work_dir = device.prepare_work_dir(timeout=timeout).rstrip("/")
    blobs = f"{work_dir}/blobs"
    keys = {name: sha256_file(p) + (".x" if os.access(p, os.X_OK) else "") for name, p in named.items()}
    remote = {name: f"{blobs}/{key}" for name, key in keys.items()}

    method, found = device.file_digests(sorted(set(remote.values())), timeout=timeout)
    pushed, skipped, replaced, todo, sent = [], [], [], [], set()
    for name, path in named.items():
        blob = remote[name]
        if blob in sent:  # the same bytes under two names cross once
            skipped.append(name)
            continue
        have = found.get(blob)
        if have is not None:
            want = keys[name].split(".")[0] if method == "sha256" else posix_cksum(path)
            if have == want:
                skipped.append(name)
                sent.add(blob)
                continue
            replaced.append(name)
        sent.add(blob)
        todo.append((path, blob))
        pushed.append(name)
    device.push_many(todo)

    set_id = hashlib.sha256("\n".join(f"{n}\0{keys[n]}" for n in sorted(keys)).encode()).hexdigest()[:24]
    dest = f"{work_dir}/sets/{set_id}"
    device.link_files(dest, {n: remote[n] for n in named}, timeout=timeout)
    return SyncResult(dest=dest, paths={n: f"{dest}/{n}" for n in named}, pushed=pushed, skipped=skipped,
                      verified_by=method if found else None, replaced=replaced)
