"""Runtime bundles: the runner, the ExecuTorch libraries it needs, and (aarch64) its own glibc.

A bundle is a flat directory that runs on any Linux of its architecture, whatever that system has
installed, plus a ``.tar.gz`` of it for copying to a device. ``bundle.json`` inside says what it
is, so a bundle can be checked (sha256 of every file) and matched against a program before a run
(:mod:`edgerun.runtime.preflight`)::

    {"schema": "edgerun.bundle", "schema_version": 1,
     "arch": "aarch64", "variant": "full", "executorch_version": "1.5.1",
     "runner": "edgerun-runner", "runner_version": "0.1.0", "runner_source_hash": "…",
     "loader": "ld-linux-aarch64.so.1",            # null for x86_64 bundles (system loader)
     "start": ["./ld-linux-aarch64.so.1", "--library-path", ".", "./edgerun-runner", "--model", "PROGRAM.pte"],
     "backends": ["XnnpackBackend"],
     "kernel_libraries": ["libexecutorch_kernels_optimized.so", …],
     "operators": ["aten::add.out", …],           # what the runner registered (--list-kernels)
     "operators_by_library": {"libexecutorch_kernels_optimized.so": ["aten::add.out", …], …},
     "operators_source": "edgerun-runner --list-kernels under qemu-aarch64 -cpu cortex-a72",
     "features": ["ptd"],                         # what the runner's header advertises (null: not run at build)
     "files": {"edgerun-runner": {"sha256": "…", "bytes": 157992}, …}, "total_bytes": …}

Starting an aarch64 bundle always goes through its own loader
(``./ld-linux-aarch64.so.1 --library-path . ./edgerun-runner …``): the device's glibc, if any, is
never used, so Raspberry Pi OS, Jetson L4T and Android's ``adb shell`` all run the same bytes.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edgerun.core.artifact import sha256_file
from edgerun.core.errors import BundleError

BUNDLE_SCHEMA = "edgerun.bundle"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
RUNNER_NAME = "edgerun-runner"
LOADERS = {"aarch64": "ld-linux-aarch64.so.1"}
ARCHES = ("x86_64", "aarch64")
VARIANTS = ("full", "slim")

# Which ExecuTorch library provides what, by the wheel's file names.
BACKEND_LIBRARIES = {"libexecutorch_backend_xnnpack.so": "XnnpackBackend"}
KERNEL_LIBRARIES = ("libexecutorch_kernels_optimized.so", "libexecutorch_kernels_quantized.so")


@dataclass(frozen=True)
class Bundle:
    """A bundle directory and what its ``bundle.json`` says. Build one with ``load_bundle``."""

    path: Path
    arch: str
    variant: str
    executorch_version: str
    runner_version: str
    runner_source_hash: str
    runner: str = RUNNER_NAME
    loader: str | None = None
    backends: tuple[str, ...] = ()
    kernel_libraries: tuple[str, ...] = ()
    operators: tuple[str, ...] | None = None
    operators_source: str | None = None
    operators_by_library: dict | None = None
    files: dict = field(default_factory=dict)
    total_bytes: int = 0
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise ValueError(f"bundle arch must be one of {ARCHES}, got {self.arch!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"bundle variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.arch in LOADERS and self.loader != LOADERS[self.arch]:
            raise ValueError(f"an {self.arch} bundle must start through {LOADERS[self.arch]}, "
                             f"bundle.json says loader={self.loader!r}")

    @property
    def tarball(self) -> Path:
        return self.path.with_name(self.path.name + ".tar.gz")

    def to_json(self) -> dict:
        out = dict(self.raw)
        out["path"] = str(self.path)
        if self.tarball.exists():
            out["tarball"] = str(self.tarball)
            out["tarball_bytes"] = self.tarball.stat().st_size
        return out


def runner_prefix(arch: str, bundle_dir: Path | str, emulator: Sequence[str] = ()) -> list[str]:
    """argv that starts the runner of a bundle located at ``bundle_dir`` (on the executing side)."""
    d = str(bundle_dir).rstrip("/") or "/"
    if arch in LOADERS:
        return [*emulator, f"{d}/{LOADERS[arch]}", "--library-path", d, f"{d}/{RUNNER_NAME}"]
    return [*emulator, f"{d}/{RUNNER_NAME}"]


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate ``bundle.json`` of a bundle directory (or of the dir a tarball unpacked to)."""
    path = Path(path)
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a runtime bundle: it has no {BUNDLE_JSON}.",
                          hint="Build one with `edgerun runtime build --arch host|aarch64`; its --json "
                               "output names the bundle directory.")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {meta_path}: {exc}", hint="Rebuild the bundle.") from exc
    if meta.get("schema") != BUNDLE_SCHEMA or meta.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{meta_path} is not an edgerun bundle description of schema version "
                          f"{BUNDLE_SCHEMA_VERSION} (schema={meta.get('schema')!r}, "
                          f"version={meta.get('schema_version')!r}).",
                          hint="Rebuild it with this edgerun: `edgerun runtime build`.")
    try:
        ops = meta.get("operators")
        return Bundle(
            path=path.resolve(), arch=meta["arch"], variant=meta["variant"],
            executorch_version=meta["executorch_version"], runner_version=meta["runner_version"],
            runner_source_hash=meta["runner_source_hash"], runner=meta.get("runner", RUNNER_NAME),
            loader=meta.get("loader"), backends=tuple(meta.get("backends", ())),
            kernel_libraries=tuple(meta.get("kernel_libraries", ())),
            operators=tuple(ops) if ops is not None else None,
            operators_source=meta.get("operators_source"),
            operators_by_library=meta.get("operators_by_library"), files=dict(meta.get("files", {})),
            total_bytes=int(meta.get("total_bytes", 0)), raw=meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path} is incomplete or inconsistent: {exc}",
                          hint="Rebuild the bundle with `edgerun runtime build`.") from exc


def verify_bundle(bundle: Bundle) -> list[str]:
    """Problems found comparing the files on disk with ``bundle.json`` (empty list: intact)."""
    problems = []
    for name, rec in sorted(bundle.files.items()):
        p = bundle.path / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif p.stat().st_size != rec.get("bytes"):
            problems.append(f"{name} has {p.stat().st_size} bytes, bundle.json says {rec.get('bytes')}")
        elif sha256_file(p) != rec.get("sha256"):
            problems.append(f"{name} does not match its sha256 in bundle.json")
    for name in [bundle.runner] + ([bundle.loader] if bundle.loader else []):
        if name not in bundle.files:
            problems.append(f"{name} is not listed in bundle.json")
    return problems


def require_intact(bundle: Bundle) -> Bundle:
    problems = verify_bundle(bundle)
    if problems:
        raise BundleError(f"bundle {bundle.path} was altered or is incomplete: {'; '.join(problems)}.",
                          hint="Rebuild it with `edgerun runtime build --force` (same arch and variant).")
    return bundle


def write_bundle_json(bundle_dir: Path, meta: dict) -> dict:
    """Hash every file in ``bundle_dir`` (except bundle.json) into ``meta`` and write bundle.json."""
    files = {}
    for p in sorted(bundle_dir.iterdir()):
        if p.name == BUNDLE_JSON or not p.is_file():
            continue
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    meta = {"schema": BUNDLE_SCHEMA, "schema_version": BUNDLE_SCHEMA_VERSION, **meta,
            "files": files, "total_bytes": sum(f["bytes"] for f in files.values())}
    (bundle_dir / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def make_tarball(bundle_dir: Path) -> Path:
    """``<bundle_dir>.tar.gz`` with the bundle under its own directory name (modes kept)."""
    out = bundle_dir.with_name(bundle_dir.name + ".tar.gz")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name, filter=clean)
    os.replace(tmp, out)
    return out
