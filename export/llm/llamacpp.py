"""llama.cpp as the independent reference for edgerun's LLMs: the one home of llama.cpp in edgerun.

llama.cpp comes from the pinned ``llama-cpp-python`` sdist (:data:`LLAMA_CPP_PYTHON`), whose
``vendor/llama.cpp`` is llama.cpp's full source. :func:`build` downloads it once with pip (the sdist's
sha256 is pinned: :data:`SDIST_SHA256`), unpacks ``vendor/llama.cpp`` and builds, with cmake and 2 jobs,
only what edgerun uses, into ``cache_dir()/"llamacpp-<version>"``:

* ``llamacpp-ref`` -- edgerun's own small program against ``llama.h`` (``native/llamacpp_ref.cpp``):
  tokenize (vocabulary only), eval (all-position logits of one prefill), greedy;
* ``llama-perplexity``, ``llama-bench``, ``llama-quantize`` -- llama.cpp's tools (benchmarks use them).

The build is keyed by the version, the cmake flags and the sha256 of ``native/`` (a change to the
reference tool rebuilds it, incrementally). ``scripts/setup`` runs :func:`build`, so tests never
download; :func:`find` returns the built :class:`LlamaCpp` or ``None`` and never touches the network.

Every :class:`LlamaCpp` call runs one process with a bounded timeout and one thread by default (so
results are deterministic); a failure raises :class:`~edgerun.core.errors.ExportError` carrying the
tail of llama.cpp's stderr. llama.cpp is never installed into edgerun's environment.

The reference tool's choices (documented in its source): float32 KV cache and no flash attention, so its
logits are as close to float32 arithmetic as llama.cpp gets on the GGUF's own weight types (it still
quantizes activations for quantized weight matmuls, as llama.cpp always does); argmax picks the lowest
id among equal maxima, like ``torch.argmax``; greedy never stops early at an end-of-generation token.

What agreement to expect from edgerun's eager model (:func:`logits_agreement`), measured here:

* an **F32 GGUF**: float32 rounding only -- worst-row SNR 113 dB (tiny random Llama), 125 dB (SmolLM2's
  real weights, 2 layers), 102 dB (all 30 layers); greedy tokens equal. Test a family on an F32 GGUF.
* an **F16 GGUF**: llama.cpp multiplies in F16 -- about 50 dB.
* a **quantized GGUF** (Q8_0, Q4_x, K-quants): llama.cpp quantizes the activations too (Q8_0/Q8_1/
  Q8_K), edgerun dequantizes the weights to float32 -- 21 dB worst row on the tiny Q8_0, 10 dB on
  SmolLM2 Q4_1 (mean 28 dB), and greedy may part at a near tie (SmolLM2 Q4_1: 0.06 logits apart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgerun.core.artifact import sha256_file
from edgerun.core.errors import ExportError, UsageError
from edgerun.core.paths import locked

LLAMA_CPP_PYTHON = "0.3.36"
#: sha256 of ``llama_cpp_python-0.3.36.tar.gz`` as PyPI serves it (checked before it is unpacked)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
REF_TOOL = "llamacpp-ref"
TOOLS = ("llama-perplexity", "llama-bench", "llama-quantize")
NATIVE = Path(__file__).resolve().parent / "native"
REF_SOURCES = ("CMakeLists.txt", "llamacpp_ref.cpp")
STAGE = "llama.cpp reference"
BUILD_JOBS = 2
#: bounds on what one call may hand to or take from llama.cpp
MAX_TEXT_BYTES = 64 << 20
MAX_IDS = 1 << 20
MAX_LOGITS_BYTES = 4 << 30
DEFAULT_TIMEOUT = 600.0
#: llama-perplexity runs at most this often for one figure (a run may lose its last log lines: see perplexity)
PERPLEXITY_RUNS = 3


def _isa_flags() -> tuple[str, ...]:
    """ggml's ISA options named flag by flag from /proc/cpuinfo -- not GGML_NATIVE: ``-march=native``
    also turns on AMX where the CPU lists it, and a VM may list ``amx_tile`` without the kernel granting
    the tile state (measured here: llama-bench died with SIGILL on ``tileloadd``). Edge CPUs have no AMX."""
    try:
        m = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        have = set(m.group(1).split()) if m else set()
    except OSError:
        have = set()
    if platform.machine() not in ("x86_64", "AMD64"):
        return ("-DGGML_NATIVE=ON",)  # Arm: no AMX; native is what the board has
    pairs = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2",
             "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512f", "GGML_AVX512_VBMI": "avx512vbmi",
             "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16"}
    return ("-DGGML_NATIVE=OFF", *(f"-D{k}={'ON' if v in have else 'OFF'}" for k, v in pairs.items()))


CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", *_isa_flags(), "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
               "-DGGML_AMX_BF16=OFF")


# ------------------------------------------------------------------------------------------ build
def cache_root() -> Path:
    """``cache_dir()/"llamacpp-<version>"``: the sdist, its unpacked ``src/``, ``build/``."""
    from edgerun.core.paths import cache_dir

    return cache_dir(f"llamacpp-{LLAMA_CPP_PYTHON}")


def _ref_hash() -> str:
    h = hashlib.sha256()
    for name in REF_SOURCES:
        h.update(name.encode() + b"\0" + (NATIVE / name).read_bytes() + b"\0")
    return h.hexdigest()


def _stamp() -> dict:
    """What a finished build was made from; a build is reused only when all of it is equal."""
    return {"llama_cpp_python": LLAMA_CPP_PYTHON, "sdist_sha256": SDIST_SHA256, "ref_sha256": _ref_hash(),
            "cmake_flags": list(CMAKE_FLAGS), "targets": [REF_TOOL, *TOOLS]}


def _built(root: Path) -> bool:
    bindir = root / "build" / "bin"
    try:
        stamp = json.loads((root / "build" / "edgerun-stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp() and all((bindir / t).is_file() for t in (REF_TOOL, *TOOLS))


def find(*, home: str | Path | None = None, threads: int = 1, timeout: float = DEFAULT_TIMEOUT) -> LlamaCpp | None:
    """The llama.cpp :func:`build` made, if it is there and current (no network, no build); else None.

    ``home``: look in that ``EDGERUN_HOME`` instead of the current one (the test suite gives each session
    its own home, so its fixture looks where ``scripts/setup`` built)."""
    from edgerun.core.paths import edgerun_home

    root = (Path(home) if home is not None else edgerun_home()) / "cache" / f"llamacpp-{LLAMA_CPP_PYTHON}"
    if not _built(root):
        return None
    return LlamaCpp(root / "build" / "bin", threads=threads, timeout=timeout)


def _fetch_sdist(root: Path, log: Callable[[str], None], stream=None) -> Path:
    sdist = root / SDIST_NAME
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist with pip (its vendor/llama.cpp is the source)")
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            _checked_run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                          "--progress-bar", "off", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp],
                         what="pip download", timeout=1800, log_file=root / "download.log", stream=stream)
            got = Path(tmp) / SDIST_NAME
            if not got.is_file():
                raise ExportError(f"pip download left no {SDIST_NAME} in {tmp} (see {root / 'download.log'}).",
                                  stage=STAGE)
            os.replace(got, sdist)
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise ExportError(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256} (the pinned llama-cpp-python "
                          f"{LLAMA_CPP_PYTHON} sdist).", stage=STAGE,
                          hint=f"Delete {sdist} and build again to download it anew.")
    return sdist


def _unpack(sdist: Path, src: Path, log: Callable[[str], None]) -> None:
    if (src / "include" / "llama.h").is_file():
        return
    log(f"unpacking vendor/llama.cpp from {sdist.name}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(dir=src.parent, prefix="src-"))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / "include" / "llama.h").is_file():
            raise ExportError(f"{sdist} has no {prefix}include/llama.h.", stage=STAGE)
        shutil.rmtree(src, ignore_errors=True)
        os.replace(tmp, src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked_run(argv: Sequence[str], *, what: str, timeout: float, log_file: Path, stream=None) -> None:
    """Run a build step with its output appended to ``log_file`` (or written to ``stream``, a file with a
    descriptor); raise with the log's tail on failure."""
    with contextlib.ExitStack() as stack:
        out = stream if stream is not None else stack.enter_context(open(log_file, "ab"))
        if stream is None:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
        else:
            print(f"\n$ {' '.join(argv)}", file=out)
        out.flush()
        try:
            rc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None
        except OSError as exc:
            raise ExportError(f"{what}: cannot run {argv[0]}: {exc}.", stage=STAGE,
                              hint="scripts/setup installs cmake and a C++ compiler.") from exc
    if rc != 0:
        status = f"timed out after {timeout:.0f} s" if rc is None else f"exited {rc}"
        if stream is not None:
            raise ExportError(f"{what} {status} (its output is above).", stage=STAGE)
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise ExportError(f"{what} {status}; the end of {log_file}:\n{tail}", stage=STAGE)


def build(*, log: Callable[[str], None] = print, jobs: int = BUILD_JOBS, stream=None) -> Path:
    """Fetch (if not cached) and build llama.cpp and ``llamacpp-ref``; return the ``bin`` directory.

    Idempotent: a current build is only checked. A change to ``native/`` rebuilds incrementally (only
    ``llamacpp-ref``); a change of version or cmake flags rebuilds from scratch. pip's and cmake's output
    go to ``download.log``/``build.log`` in the cache directory, or to ``stream`` when given."""
    root = cache_root()
    with locked(root / "build.lock"):
        bindir = root / "build" / "bin"
        if _built(root):
            return bindir
        sdist = _fetch_sdist(root, log, stream)
        src = root / "src"
        _unpack(sdist, src, log)
        build_dir = root / "build"
        stamp_file = build_dir / "edgerun-stamp.json"
        try:
            old = json.loads(stamp_file.read_text())
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("cmake_flags") != list(CMAKE_FLAGS):
            shutil.rmtree(build_dir)
        stamp_file.unlink(missing_ok=True)
        # The reference tool's sources are copied beside the build, so the cmake source dir stays put
        # whichever checkout or installed copy of edgerun builds.
        ref_src = root / "ref-src"
        ref_src.mkdir(exist_ok=True)
        for name in REF_SOURCES:
            data = (NATIVE / name).read_bytes()
            if not (ref_src / name).is_file() or (ref_src / name).read_bytes() != data:
                (ref_src / name).write_bytes(data)
        log_file = root / "build.log"
        if stream is None:
            log_file.write_text("")
        generator = ["-G", "Ninja"] if shutil.which("ninja") and not (build_dir / "Makefile").exists() else []
        log(f"configuring llama.cpp {LLAMA_CPP_PYTHON} (Release, {' '.join(f[2:] for f in CMAKE_FLAGS if 'ON' in f)})")
        _checked_run(["cmake", "-S", str(ref_src), "-B", str(build_dir), *generator,
                      f"-DLLAMA_CPP_SOURCE_DIR={src}", *CMAKE_FLAGS],
                     what="configuring llama.cpp", timeout=600, log_file=log_file, stream=stream)
        log(f"building {REF_TOOL}, {', '.join(TOOLS)} with {jobs} jobs")
        _checked_run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", REF_TOOL, *TOOLS],
                     what="building llama.cpp", timeout=7200, log_file=log_file, stream=stream)
        missing = [t for t in (REF_TOOL, *TOOLS) if not (bindir / t).is_file()]
        if missing:
            raise ExportError(f"the llama.cpp build finished without {', '.join(missing)} in {bindir}.", stage=STAGE)
        stamp_file.write_text(json.dumps(_stamp(), indent=1))
        return bindir


# ------------------------------------------------------------------------------------ comparing
def logits_agreement(ref: np.ndarray, ours: np.ndarray) -> dict:
    """How closely ``ours`` ([T, vocab] logits) follows ``ref`` (llama.cpp's), row by row, with edgerun's
    own metrics (:mod:`edgerun.core.numerics`, llama.cpp's row the signal): ``{"cosine_min",
    "snr_db_min", "snr_db_mean", "top1"}`` -- the worst row's cosine and SNR (``inf`` when equal), the
    mean SNR and the share of rows whose argmax agrees."""
    from edgerun.core.numerics import cosine, snr_db

    a, b = np.asarray(ref), np.asarray(ours)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"logits_agreement needs two equal [T, vocab] arrays, got {a.shape} and {b.shape}")
    snr = [snr_db(b[t], a[t]) for t in range(a.shape[0])]
    return {"cosine_min": min(cosine(b[t], a[t]) for t in range(a.shape[0])), "snr_db_min": min(snr),
            "snr_db_mean": float(np.mean(snr)), "top1": float((a.argmax(1) == b.argmax(1)).mean())}


# ------------------------------------------------------------------------------------------ calls
@dataclasses.dataclass(frozen=True)
class _Proc:
    stdout: str
    stderr: str


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _check_gguf(gguf: str | Path) -> Path:
    path = Path(gguf)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open the GGUF ({exc.strerror}).", stage=STAGE) from exc
    if magic != b"GGUF":
        raise UsageError(f"{path}: not a GGUF file (its first bytes are {magic!r}, a GGUF starts with b'GGUF').",
                         stage=STAGE)
    return path


def _check_ids(ids: Sequence[int], what: str) -> list[int]:
    out = [int(i) for i in ids]
    if not out:
        raise UsageError(f"{what}: no token ids.", stage=STAGE)
    if len(out) > MAX_IDS:
        raise UsageError(f"{what}: {len(out)} token ids, more than the {MAX_IDS} one call may take.", stage=STAGE)
    if min(out) < 0:
        raise UsageError(f"{what}: negative token id {min(out)}.", stage=STAGE)
    return out


def _json_ids(value, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ExportError(f"{what}: expected a JSON list of integer ids, got {str(value)[:200]!r}.", stage=STAGE)
    return value


class LlamaCpp:
    """The built llama.cpp: the reference tool and llama.cpp's own tools, each call its own process.

    ``threads`` (default 1: deterministic) and ``timeout`` (seconds, per call) apply to every call."""

    def __init__(self, bindir: str | Path, *, threads: int = 1, timeout: float = DEFAULT_TIMEOUT):
        self.bindir = Path(bindir)
        if threads < 1:
            raise UsageError(f"threads={threads}: llama.cpp needs at least 1 thread.", stage=STAGE)
        self.threads = threads
        self.timeout = timeout

    @property
    def version(self) -> str:
        """The pinned ``llama-cpp-python`` release whose vendored llama.cpp this is."""
        return LLAMA_CPP_PYTHON

    def build_info(self) -> str:
        """The first line of ``llama-perplexity --version`` (``version: 0.5.0-dev (build 0, commit unknown)``:
        built from an sdist, llama.cpp has no git commit to name; :data:`SDIST_SHA256` pins its source)."""
        p = self._run("llama-perplexity", ["--version"], what="--version", timeout=60)
        lines = [ln.strip() for ln in (p.stdout + "\n" + p.stderr).splitlines() if ln.strip()]
        return next((ln for ln in lines if ln.startswith("version")), lines[0] if lines else "unknown")

    @property
    def paths(self) -> dict[str, Path]:
        """Each built executable by name (``llamacpp-ref``, ``llama-perplexity``, ...)."""
        return {t: self.bindir / t for t in (REF_TOOL, *TOOLS)}

    def __repr__(self) -> str:
        return f"LlamaCpp({str(self.bindir)!r}, version={self.version!r}, threads={self.threads})"

    # -- one process
    def _run(self, tool: str, args: Sequence[str], *, what: str, timeout: float | None = None) -> _Proc:
        argv = [str(self.bindir / tool), *args]
        limit = self.timeout if timeout is None else timeout
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode(errors="replace")
            raise ExportError(f"llama.cpp {what} timed out after {limit:.0f} s ({tool}); its stderr ended:\n"
                              f"{_tail(err)}", stage=STAGE) from exc
        except OSError as exc:
            raise ExportError(f"cannot run {argv[0]}: {exc.strerror}.", stage=STAGE,
                              hint="Build llama.cpp again: .venv/bin/python -m edgerun.export.llm.llamacpp") from exc
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if p.returncode != 0:
            status = f"died of signal {-p.returncode}" if p.returncode < 0 else f"exited {p.returncode}"
            raise ExportError(f"llama.cpp {what} {status} ({tool}); its stderr ended:\n{_tail(err)}", stage=STAGE)
        return _Proc(out, err)

    def _ref_json(self, args: Sequence[str], *, what: str) -> dict:
        p = self._run(REF_TOOL, args, what=what)
        try:
            obj = json.loads(p.stdout)
        except ValueError as exc:
            raise ExportError(f"llama.cpp {what}: {REF_TOOL} printed no JSON object: {p.stdout[:300]!r}.",
                              stage=STAGE) from exc
        if not isinstance(obj, dict):
            raise ExportError(f"llama.cpp {what}: {REF_TOOL} printed {type(obj).__name__}, not an object.", stage=STAGE)
        return obj

    @staticmethod
    def _write_ids(tmp: str, ids: Sequence[int]) -> str:
        path = os.path.join(tmp, "ids.txt")
        Path(path).write_text(" ".join(str(i) for i in ids))
        return path

    def _model_args(self, gguf: Path, tmp: str, ids: Sequence[int]) -> list[str]:
        return ["--model", str(gguf), "--ids-file", self._write_ids(tmp, ids), "--threads", str(self.threads)]

    # -- the reference
    def tokenize(self, gguf: str | Path, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama.cpp's tokens for ``text`` (``llama_tokenize`` with the vocabulary only loaded).

        ``add_special``: BOS/EOS as the GGUF asks (``tokenizer.ggml.add_bos_token``/``add_eos_token``);
        ``parse_special``: control tokens written in the text (``<|im_start|>``) are matched as tokens."""
        gguf = _check_gguf(gguf)
        obj = self._tokenize(gguf, text.encode("utf-8"), add_special=add_special, parse_special=parse_special)
        return _json_ids(obj.get("ids"), f"llama.cpp tokenize of {gguf.name}")

    def vocab(self, gguf: str | Path) -> dict:
        """llama.cpp's reading of the GGUF's tokenizer: ``{"n_vocab", "bos", "eos", "add_bos", "vocab_type"}``
        (``vocab_type``: llama.h's ``llama_vocab_type``, 1 SPM, 2 BPE, ...). ``add_bos`` is what llama.cpp
        does, which is its per-tokenizer default when the GGUF has no ``tokenizer.ggml.add_bos_token``."""
        gguf = _check_gguf(gguf)
        obj = self._tokenize(gguf, b"", add_special=False, parse_special=False)
        return {k: obj.get(k) for k in ("n_vocab", "bos", "eos", "add_bos", "vocab_type")}

    def _tokenize(self, gguf: Path, data: bytes, *, add_special: bool, parse_special: bool) -> dict:
        if len(data) > MAX_TEXT_BYTES:
            raise UsageError(f"a text of {len(data)} bytes to tokenize; one call takes at most {MAX_TEXT_BYTES}.",
                             stage=STAGE)
        with tempfile.TemporaryDirectory(prefix="edgerun-llamacpp-") as tmp:
            path = os.path.join(tmp, "text.txt")
            Path(path).write_bytes(data)
            return self._ref_json(["tokenize", "--model", str(gguf), "--text-file", path,
                                   "--add-special", str(int(add_special)), "--parse-special", str(int(parse_special))],
                                  what=f"tokenize of {gguf.name}")

    def greedy(self, gguf: str | Path, prompt_ids: Sequence[int], n: int) -> list[int]:
        """``n`` new ids: the prompt prefilled in one batch, then one argmax token per decode (no early stop)."""
        gguf = _check_gguf(gguf)
        prompt = _check_ids(prompt_ids, "greedy prompt")
        if not 0 <= int(n) <= 1 << 16:
            raise UsageError(f"greedy n={n}: expected 0..65536 new tokens.", stage=STAGE)
        with tempfile.TemporaryDirectory(prefix="edgerun-llamacpp-") as tmp:
            obj = self._ref_json(["greedy", *self._model_args(gguf, tmp, prompt), "-n", str(int(n))],
                                 what=f"greedy on {gguf.name}")
        ids = _json_ids(obj.get("ids"), f"llama.cpp greedy on {gguf.name}")
        if len(ids) != int(n):
            raise ExportError(f"llama.cpp greedy on {gguf.name}: {len(ids)} ids, asked for {n}.", stage=STAGE)
        return ids

    def logits(self, gguf: str | Path, ids: Sequence[int]) -> np.ndarray:
        """``[len(ids), n_vocab]`` float32: llama.cpp's logits at every position of one prefill of ``ids``."""
        gguf = _check_gguf(gguf)
        ids = _check_ids(ids, "logits ids")
        with tempfile.TemporaryDirectory(prefix="edgerun-llamacpp-") as tmp:
            out = os.path.join(tmp, "logits.f32")
            obj = self._ref_json(["eval", *self._model_args(gguf, tmp, ids), "--out", out],
                                 what=f"eval on {gguf.name}")
            n, vocab = obj.get("n_tokens"), obj.get("n_vocab")
            if n != len(ids) or not isinstance(vocab, int) or vocab <= 0:
                raise ExportError(f"llama.cpp eval on {gguf.name}: it reported n_tokens={n!r}, n_vocab={vocab!r} "
                                  f"for {len(ids)} ids.", stage=STAGE)
            expected = n * vocab * 4
            if expected > MAX_LOGITS_BYTES:
                raise ExportError(f"llama.cpp eval on {gguf.name}: {n} x {vocab} logits exceed {MAX_LOGITS_BYTES} "
                                  "bytes.", stage=STAGE)
            size = os.path.getsize(out)
            if size != expected:
                raise ExportError(f"llama.cpp eval on {gguf.name}: {out} holds {size} bytes, expected {expected} "
                                  f"({n} positions x {vocab} float32).", stage=STAGE)
            return np.fromfile(out, dtype=np.float32).reshape(n, vocab)

    def quantize(self, gguf: str | Path, out: str | Path, qtype: str) -> Path:
        """``llama-quantize gguf out qtype`` (``Q4_0``, ``Q8_0``, ``Q4_K_M`` ...; ``--allow-requantize`` so a
        quantized GGUF may be the source): llama.cpp's own choice of type per tensor, as a user gets it."""
        gguf = _check_gguf(gguf)
        if not re.fullmatch(r"[A-Za-z0-9_]{2,16}", qtype):
            raise UsageError(f"quantize type {qtype!r}: expected a llama-quantize type name such as Q4_0.", stage=STAGE)
        self._run("llama-quantize", ["--allow-requantize", str(gguf), str(out), qtype, str(self.threads)],
                  what=f"quantize of {gguf.name} to {qtype}")
        return _check_gguf(out)

    def perplexity(self, gguf: str | Path, text_file: str | Path, *, ctx: int, chunks: int | None = None,
                   timeout: float | None = None) -> dict:
        """``llama-perplexity -c ctx`` on ``text_file``: its final estimate and the chunking it used.

        llama-perplexity's rule (tools/perplexity/perplexity.cpp, ``perplexity()``; edgerun passes
        ``-b ctx`` so one chunk is one decode):

        * The whole file, less one trailing newline (``-f`` drops it), is tokenized once with
          ``add_special=True, parse_special=False`` (so BOS first when llama.cpp's ``add_bos`` is on for the
          GGUF -- see :meth:`vocab`; control-token text is plain text).
        * It needs at least ``2 * ctx`` tokens; otherwise it prints no estimate (this raises).
        * ``n_chunks = n_tokens // ctx`` (at most ``chunks``); chunk ``i`` is tokens ``[i*ctx, (i+1)*ctx)``;
          the tail past the last whole chunk is never read. Each chunk starts from an empty KV cache.
        * BOS: when ``add_bos_token`` is set, the chunk's **first token is replaced** by BOS (not
          inserted): the chunk is still ``ctx`` tokens, and the replaced text token is never seen.
        * Scored: only the second half -- the logits at positions ``first = ctx // 2`` .. ``ctx - 2``
          predict the tokens at ``first + 1`` .. ``ctx - 1``: ``ctx - ctx // 2 - 1`` tokens per chunk;
          the first half only gives context.
        * ``PPL = exp(mean NLL)`` over all scored tokens of all chunks, NLL from a float64 log-softmax
          over the full vocabulary. The per-chunk sums are added by several threads, so the last digits
          may differ run to run.

        Returns ``{"ppl", "ppl_stderr", "ctx", "n_chunks", "n_tokens", "scored_per_chunk", "n_scored",
        "first_scored_position", "bos_replaces_first"}``."""
        gguf = _check_gguf(gguf)
        text_file = Path(text_file)
        try:
            size = text_file.stat().st_size
        except OSError as exc:
            raise UsageError(f"{text_file}: cannot read the text for perplexity ({exc.strerror}).", stage=STAGE) from exc
        if size > MAX_TEXT_BYTES:
            raise UsageError(f"{text_file}: {size} bytes; perplexity takes at most {MAX_TEXT_BYTES}.", stage=STAGE)
        if ctx < 4:
            raise UsageError(f"perplexity ctx={ctx}: llama-perplexity needs a context of at least 4 tokens.",
                             stage=STAGE)
        data = text_file.read_bytes()
        if data.endswith(b"\n"):
            data = data[:-1]  # as llama.cpp's -f does
        facts = self._tokenize(gguf, data, add_special=True, parse_special=False)
        n_tokens = len(_json_ids(facts.get("ids"), f"llama.cpp tokenize of {text_file.name}"))
        if n_tokens < 2 * ctx:
            raise UsageError(f"{text_file} is {n_tokens} tokens for {gguf.name}; llama-perplexity -c {ctx} needs at "
                             f"least {2 * ctx}.", stage=STAGE, hint=f"Use ctx <= {n_tokens // 2} or a longer text.")
        args = ["-m", str(gguf), "-f", str(text_file), "-c", str(ctx), "-b", str(ctx), "-t", str(self.threads),
                "--no-warmup"]
        if chunks is not None:
            args += ["--chunks", str(int(chunks))]
        # llama.cpp's logger is a thread whose queue is never flushed at exit (it leaks the logger on purpose,
        # llama.cpp issue 22142), so a run may end without its last lines -- the final estimate among them
        # (seen here once in some 45 runs, on a loaded machine): such a run is made again, PERPLEXITY_RUNS at most
        for _ in range(PERPLEXITY_RUNS):
            p = self._run("llama-perplexity", args, what=f"perplexity of {gguf.name} on {text_file.name}",
                          timeout=timeout)
            both = p.stdout + "\n" + p.stderr
            m = re.search(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)", both)
            if m is not None:
                break
        c = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", both)
        if m is None or c is None:
            raise ExportError(f"llama-perplexity on {gguf.name} printed no final estimate; its output ended:\n"
                              f"{_tail(both)}", stage=STAGE)
        n_chunks = int(c.group(1))
        if int(c.group(2)) != ctx:
            raise ExportError(f"llama-perplexity used n_ctx={c.group(2)}, asked for {ctx}.", stage=STAGE)
        scored = ctx - ctx // 2 - 1
        return {"ppl": float(m.group(1)), "ppl_stderr": float(m.group(2)), "ctx": ctx, "n_chunks": n_chunks,
                "n_tokens": n_tokens, "scored_per_chunk": scored, "n_scored": n_chunks * scored,
                "first_scored_position": ctx // 2, "bos_replaces_first": facts.get("add_bos") is True}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgerun.export.llm.llamacpp``: build (or check) llama.cpp; print where it is."""
    import argparse

    ap = argparse.ArgumentParser(description="Build llama.cpp (edgerun's LLM reference) into EDGERUN_HOME's cache.")
    ap.add_argument("-j", "--jobs", type=int, default=BUILD_JOBS)
    ap.add_argument("--output-here", action="store_true",
                    help="pip's and cmake's output on stdout (scripts/setup keeps it in its step log) instead "
                         "of download.log/build.log in the cache directory")
    args = ap.parse_args(argv)
    bindir = build(log=lambda m: print(f"llamacpp: {m}", file=sys.stderr, flush=True), jobs=args.jobs,
                   stream=sys.stdout if args.output_here else None)
    print(bindir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
