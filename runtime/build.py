"""Build ``edgerun-runner`` for the host or aarch64 and assemble it into a bundle.

``build_bundle(BuildRequest(arch="aarch64"))`` is ``edgerun runtime build --arch aarch64``:

1. find the ExecuTorch C++ runtime to build against: the installed wheel for the host, or the
   aarch64 manylinux wheel of the *same* executorch version, fetched once with pip into the wheel
   cache (``$EDGERUN_WHEEL_CACHE``, default ``~/.cache/edgerun/wheels``: shared across
   EDGERUN_HOMEs so CI and test sessions download it once; never committed);
2. configure and build ``runtime/native`` with CMake (cross: Debian's ``g++-aarch64-linux-gnu``);
3. copy the runner, the ExecuTorch libraries of the variant and, for aarch64, the glibc/libstdc++
   runtime of the cross sysroot with its dynamic loader into a fresh directory;
4. ask the runner itself which operators and backends it registered (``--list-kernels``; under
   ``qemu-aarch64`` for a cross build), hash every file into ``bundle.json``, write the tarball.

Bundles are cached under ``cache_dir("bundles")`` by arch + variant + executorch version + runner
source hash, so a change to any of them builds a new bundle and an unchanged one is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgerun.core.errors import environment_problem
from edgerun.core.paths import cache_dir, locked

from .bundle import (BACKEND_LIBRARIES, KERNEL_LIBRARIES, LOADERS, RUNNER_NAME, Bundle, BundleError,
                     load_bundle, make_tarball, runner_prefix, verify_bundle, write_bundle_json)

log = logging.getLogger("edgerun.runtime")

NATIVE_DIR = Path(__file__).resolve().parent / "native"
RUNNER_VERSION = "0.1.0"
AARCH64_WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Only to enumerate the cross-built runner's kernels at build time; any Armv8 model would do.
LIST_KERNELS_QEMU_CPU = "cortex-a72"

# ExecuTorch libraries per variant, in registration order (the runtime first).
_COMMON_LIBS = ("libexecutorch.so", "libexecutorch_threadpool.so", "libexecutorch_etdump.so",
                "libexecutorch_backend_xnnpack.so", "libexecutorch_kernels_quantized.so")
VARIANT_LIBS = {
    "full": _COMMON_LIBS + ("libexecutorch_kernels_optimized.so",),
    # Fully delegated programs need no portable/optimized kernels: ~9 MB less on the device.
    "slim": _COMMON_LIBS,
}


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass(frozen=True)
class BuildRequest:
    """What to build. ``arch`` is ``host``, ``x86_64`` or ``aarch64``; ``variant`` ``full``|``slim``."""

    arch: str = "host"
    variant: str = "full"
    jobs: int = 2
    force: bool = False

    def __post_init__(self):
        if self.arch not in ("host", "x86_64", "aarch64"):
            raise ValueError(f"arch must be host, x86_64 or aarch64, got {self.arch!r}")
        if self.variant not in VARIANT_LIBS:
            raise ValueError(f"variant must be one of {sorted(VARIANT_LIBS)}, got {self.variant!r}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.target_arch == "x86_64" and host_arch() != "x86_64":
            raise ValueError("an x86_64 runner can only be built on an x86_64 host")

    @property
    def target_arch(self) -> str:
        return host_arch() if self.arch == "host" else self.arch

    @property
    def cross(self) -> bool:
        return self.target_arch != host_arch()


# --------------------------------------------------------------------------------- identities


def runner_source_hash() -> str:
    """sha256 over the runner's sources (paths and bytes): the cache key's source part."""
    h = hashlib.sha256()
    files = [NATIVE_DIR / "CMakeLists.txt", *sorted((NATIVE_DIR / "cmake").glob("*.cmake")),
             *sorted((NATIVE_DIR / "src").iterdir())]
    for p in files:
        if p.is_file():
            h.update(str(p.relative_to(NATIVE_DIR)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def executorch_version() -> str:
    """The installed executorch distribution's version (the runtime the runner must match)."""
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError as exc:
        raise BundleError("the executorch package is not installed, so there is no C++ runtime to "
                          "build the runner against.", stage="build runtime",
                          hint="Install edgerun's dependencies: scripts/setup.") from exc


def bundle_key(arch: str, variant: str, et_version: str, source_hash: str) -> str:
    safe_version = re.sub(r"[^A-Za-z0-9._-]", "_", et_version)
    return f"{arch}-{variant}-et{safe_version}-{source_hash[:12]}"


def wheel_cache_dir() -> Path:
    env = os.environ.get("EDGERUN_WHEEL_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "edgerun" / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------- the runtime to link


def _installed_executorch_root() -> Path:
    spec = importlib.util.find_spec("executorch")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("the executorch package is not installed.", stage="build runtime",
                          hint="Install edgerun's dependencies: scripts/setup.")
    root = Path(list(spec.submodule_search_locations)[0])
    _check_runtime_root(root, "the installed executorch wheel")
    return root


def _check_runtime_root(root: Path, what: str) -> None:
    if not (root / "include" / "executorch" / "extension" / "module" / "module.h").is_file():
        raise BundleError(f"{what} at {root} ships no C++ headers (include/executorch).",
                          stage="build runtime",
                          hint="The runner needs an executorch wheel that carries its C++ runtime "
                               "(executorch >= 1.x from PyPI does).")
    missing = [lib for lib in VARIANT_LIBS["full"] if not (root / "lib" / lib).is_file()]
    if missing:
        raise BundleError(f"{what} at {root} lacks {', '.join(missing)}.", stage="build runtime",
                          hint="Use the PyPI executorch wheel, which ships these libraries.")


def _pip_download_aarch64_wheel(version: str, dest: Path) -> Path:
    pyver = f"{sys.version_info.major}{sys.version_info.minor}"
    pattern = f"executorch-{version}-*{AARCH64_WHEEL_PLATFORM}*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--no-deps",
           "--only-binary=:all:", "--platform", AARCH64_WHEEL_PLATFORM, "--python-version", pyver,
           "-d", str(dest), "--quiet"]
    log.info("fetching the aarch64 executorch %s wheel into %s", version, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        raise BundleError(f"could not download the aarch64 executorch=={version} wheel "
                          f"({AARCH64_WHEEL_PLATFORM}): {(proc.stderr or proc.stdout).strip()[-800:]}",
                          stage="build runtime",
                          hint="The cross build needs PyPI once (it is cached in $EDGERUN_WHEEL_CACHE, "
                               "default ~/.cache/edgerun/wheels); or put the wheel file there yourself.")
    return found[-1]


def _locked(directory: Path, lock_file: Path | None = None):
    """An exclusive lock on ``directory`` (shared by every process and EDGERUN_HOME using it), held
    on ``lock_file`` (default ``DIRECTORY/.lock``; outside the directory when it may be removed)."""
    return locked(lock_file or directory / ".lock")


def aarch64_executorch_root(version: str) -> Path:
    """The aarch64 wheel's ``executorch`` package (headers and libraries only), unpacked in the cache."""
    cache = wheel_cache_dir()
    unpacked = cache / f"executorch-{version}-{AARCH64_WHEEL_PLATFORM}"
    root = unpacked / "executorch"
    with _locked(cache):
        _unpack_aarch64_wheel(cache, version, unpacked)
    _check_runtime_root(root, f"the aarch64 executorch {version} wheel")
    return root


def _unpack_aarch64_wheel(cache: Path, version: str, unpacked: Path) -> None:
    if not (unpacked / ".complete").exists():
        wheel = _pip_download_aarch64_wheel(version, cache)
        tmp = cache / f".unpack-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.startswith(("executorch/include/", "executorch/lib/")) and not name.endswith("/"):
                        z.extract(name, tmp)
        except zipfile.BadZipFile as exc:
            wheel.unlink(missing_ok=True)
            raise BundleError(f"{wheel} is not a valid wheel ({exc}); it was removed.",
                              stage="build runtime", hint="Run the build again to download it anew.") from exc
        (tmp / ".complete").write_text(wheel.name + "\n")
        shutil.rmtree(unpacked, ignore_errors=True)
        os.replace(tmp, unpacked)


def executorch_root(arch: str, version: str) -> Path:
    return _installed_executorch_root() if arch == host_arch() else aarch64_executorch_root(version)


# ----------------------------------------------------------------------------------- building


def _require_tool(name: str, why: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BundleError(f"{name} is not installed; it is needed {why}.", stage="build runtime",
                          hint=f"Run scripts/setup, or on Debian: apt-get install {package}.")
    return path


def _compiler(arch: str) -> str:
    if arch == "aarch64" and host_arch() != "aarch64":
        return _require_tool("aarch64-linux-gnu-g++", "to cross-compile the aarch64 runner",
                             "g++-aarch64-linux-gnu")
    return _require_tool(os.environ.get("CXX", "g++"), "to compile the runner", "g++")


def _run_logged(cmd: list[str], log_path: Path, what: str, cwd: Path | None = None) -> None:
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BundleError(f"{what} failed (exit {proc.returncode}); the end of {log_path}:\n{tail}",
                          stage="build runtime", hint="Read the log above; --debug shows the traceback.")


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def compile_runner(req: BuildRequest, et_root: Path, et_version: str, source_hash: str,
                   build_dir: Path, log_path: Path | None = None) -> Path:
    """Configure and build ``runtime/native`` into ``build_dir``; returns the runner binary.

    The compiler's output goes to ``log_path`` (default ``BUILD_DIR/build-PID.log``: this process's
    own, so an error shows this build's log, never another process's)."""
    cmake = _require_tool("cmake", "to build the runner", "cmake")
    cxx = _compiler(req.target_arch)
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or build_dir / f"build-{os.getpid()}.log"
    log_path.write_text("")
    cmd = [cmake, "-S", str(NATIVE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
           f"-DEDGERUN_ET_ROOT={et_root}", f"-DEDGERUN_ET_VERSION={et_version}",
           f"-DEDGERUN_SOURCE_HASH={source_hash}", f"-DEDGERUN_RUNNER_VERSION={RUNNER_VERSION}",
           f"-DEDGERUN_VARIANT={req.variant}"]
    if req.cross:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={NATIVE_DIR / 'cmake' / 'aarch64-linux-gnu.cmake'}")
    else:
        cmd.append(f"-DCMAKE_CXX_COMPILER={cxx}")
    log.info("configuring the %s runner (%s) in %s", req.target_arch, req.variant, build_dir)
    _run_logged(cmd, log_path, "configuring the runner (cmake)")
    log.info("compiling the runner (-j%d)", req.jobs)
    _run_logged([cmake, "--build", str(build_dir), "-j", str(req.jobs)], log_path, "compiling the runner")
    binary = build_dir / RUNNER_NAME
    if not binary.is_file():
        raise BundleError(f"the build finished but produced no {binary}.", stage="build runtime",
                          hint=f"See {log_path}.")
    return binary


# ------------------------------------------------------------------------------------ bundling


_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of an ELF file (via binutils' readelf, which reads any architecture)."""
    readelf = _require_tool("readelf", "to list the libraries the runner needs", "binutils")
    proc = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"readelf cannot read {path}: {proc.stderr.strip()}", stage="build runtime")
    return _NEEDED.findall(proc.stdout)


def _sysroot_library(cxx: str, name: str) -> Path:
    """Where the compiler's own sysroot keeps a runtime library (``-print-file-name``)."""
    out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    path = Path(out)
    if not path.is_absolute() or not path.exists():
        raise BundleError(f"the toolchain {cxx} has no {name} to put into the bundle.", stage="build runtime",
                          hint="Install the cross toolchain's C/C++ runtime (Debian: libc6-arm64-cross, "
                               "libstdc++6-arm64-cross, pulled in by g++-aarch64-linux-gnu).")
    return path.resolve()


def _copy_with_system_runtime(staging: Path, cxx: str, loader: str) -> list[str]:
    """Copy glibc/libstdc++ etc. that the bundle's ELF files need, plus the loader; returns names."""
    added: list[str] = []
    pending = [p for p in staging.iterdir() if p.is_file()]
    wanted = {loader}
    while pending:
        for needed in elf_needed(pending.pop()):
            wanted.add(needed)
        for name in sorted(wanted):
            if not (staging / name).exists():
                src = _sysroot_library(cxx, name)
                shutil.copyfile(src, staging / name)
                os.chmod(staging / name, 0o755)
                added.append(name)
                pending.append(staging / name)
    return sorted(added)


def _list_kernels(arch: str, staging: Path) -> tuple[dict | None, str | None]:
    """Ask the runner for its registered operators/backends; (None, None) if it cannot run here."""
    emulator: list[str] = []
    how = f"{RUNNER_NAME} --list-kernels"
    if arch != host_arch():
        qemu = shutil.which(f"qemu-{arch}")
        if not qemu:
            log.warning("qemu-%s is not installed: the bundle's operator list stays empty and "
                        "pre-flight cannot check operators (apt-get install qemu-user)", arch)
            return None, None
        emulator = [qemu, "-cpu", LIST_KERNELS_QEMU_CPU]
        how += f" under qemu-{arch} -cpu {LIST_KERNELS_QEMU_CPU}"
    argv = runner_prefix(arch, staging, emulator) + ["--list-kernels"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kernels = next((x for x in lines if x.get("type") == "kernels"), None)
    if proc.returncode != 0 or kernels is None:
        raise BundleError(f"the freshly built runner does not start: {' '.join(argv)} exited "
                          f"{proc.returncode}: {proc.stderr.strip()[-1500:]}", stage="build runtime",
                          hint="A library is probably missing from the bundle; --debug for details.")
    header = next((x for x in lines if x.get("type") == "header"), {})
    # what the runner advertises it takes (e.g. "ptd": --ptd), for pre-flight; [] from one that predates the list
    return {**kernels, "features": list(header.get("features", []))}, how


def assemble_bundle(req: BuildRequest, binary: Path, et_root: Path, et_version: str, source_hash: str,
                    dest: Path) -> Bundle:
    """Lay out a bundle in a staging directory, describe it, then move it to ``dest`` atomically."""
    arch = req.target_arch
    staging = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(binary, staging / RUNNER_NAME)
        os.chmod(staging / RUNNER_NAME, 0o755)
        libs = VARIANT_LIBS[req.variant]
        for lib in libs:
            shutil.copyfile(et_root / "lib" / lib, staging / lib)
            os.chmod(staging / lib, 0o755)
        system_libs: list[str] = []
        loader = LOADERS.get(arch)
        if loader:
            system_libs = _copy_with_system_runtime(staging, _compiler(arch), loader)
            os.chmod(staging / loader, 0o755)
        else:
            missing = sorted({n for p in staging.iterdir() for n in elf_needed(p)
                              if n.startswith("libexecutorch") and not (staging / n).exists()})
            if missing:
                raise BundleError(f"the runner needs {', '.join(missing)}, which the bundle lacks.",
                                  stage="build runtime")
        kernels, how = _list_kernels(arch, staging)
        backends = sorted(kernels["backends"]) if kernels else sorted(
            BACKEND_LIBRARIES[lib] for lib in libs if lib in BACKEND_LIBRARIES)
        meta = {
            "arch": arch,
            "variant": req.variant,
            "executorch_version": et_version,
            "runner": RUNNER_NAME,
            "runner_version": RUNNER_VERSION,
            "runner_source_hash": source_hash,
            "loader": loader,
            "start": runner_prefix(arch, ".") + ["--model", "PROGRAM.pte"],
            "backends": backends,
            "backends_source": how if kernels else "library names (the runner could not run here)",
            "kernel_libraries": [lib for lib in libs if lib in KERNEL_LIBRARIES],
            "libraries": list(libs),
            "system_libraries": system_libs,
            "operators": sorted(kernels["operators"]) if kernels else None,
            # which library registered each operator (dladdr of the kernel function, in the runner)
            "operators_by_library": kernels.get("operators_by_library") if kernels else None,
            "operators_source": how,
            # null: the runner could not run here to say (pre-flight then cannot tell)
            "features": sorted(kernels["features"]) if kernels else None,
            "build": {
                "compiler": _first_line([_compiler(arch), "--version"]),
                "cmake": _first_line(["cmake", "--version"]),
                "build_type": "Release",
                "cross": req.cross,
                "host_arch": host_arch(),
                "executorch_root": str(et_root),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        }
        write_bundle_json(staging, meta)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    make_tarball(dest)
    return load_bundle(dest)


def build_bundle(req: BuildRequest) -> Bundle:
    """Build (or reuse from the cache) the bundle for ``req``; returns it, verified."""
    et_version = executorch_version()
    source_hash = runner_source_hash()
    key = bundle_key(req.target_arch, req.variant, et_version, source_hash)
    try:
        dest = cache_dir("bundles") / key
        build_root = cache_dir("build")
    except OSError as exc:  # EDGERUN_HOME read-only, full, or under a file: this machine's problem
        raise environment_problem(exc, "cannot create the bundle cache under EDGERUN_HOME",
                                  stage="build runtime") from None
    if dest.exists() and not req.force:
        try:
            bundle = load_bundle(dest)
            if not verify_bundle(bundle) and bundle.tarball.exists():
                log.info("reusing bundle %s", dest)
                return bundle
            log.info("cached bundle %s is damaged: rebuilding it", dest)
        except BundleError:
            log.info("cached bundle %s is unreadable: rebuilding it", dest)
    et_root = executorch_root(req.target_arch, et_version)
    build_dir = build_root / key
    # The lock first, beside the build directory (a --force removes the directory, never the lock):
    # two processes sharing an EDGERUN_HOME build one at a time, each in a whole tree of its own.
    with _locked(build_dir, build_root / f"{key}.lock"):
        if req.force:
            shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        if dest.exists() and not req.force:
            with contextlib.suppress(BundleError):
                bundle = load_bundle(dest)
                if not verify_bundle(bundle) and bundle.tarball.exists():
                    return bundle  # the other process built it meanwhile
        binary = compile_runner(req, et_root, et_version, source_hash, build_dir)
        bundle = assemble_bundle(req, binary, et_root, et_version, source_hash, dest)
    log.info("bundle %s: %.1f MB (%s)", dest, bundle.total_bytes / 1e6, bundle.tarball.name)
    return bundle
