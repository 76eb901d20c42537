"""generate, bench-llm and on-device perplexity: the hall's wiring of an LLM artifact, a device and the store.

* :class:`ArtifactTokenizer` — the artifact's own ``tokenizer.json`` (its sha256 checked against the
  manifest), the chat template rendered in a sandbox, the ids that end a generation;
* :func:`generate` — tokenise on this machine, run the runner's LLM mode on the device, print the text
  as the token lines arrive (:class:`TokenStream`, where the transport streams), analyse and store;
* :func:`bench_llm` — llama-bench's grid (``ppP``, ``tgN`` × thread counts × repetitions) on every
  device concurrently, each cell a stored record comparable with ``edgerun compare``;
* :func:`perplexity_on_device` — score the held-out text the export measured eager perplexity on, with
  the same windows, on the device.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

from edgerun.core.artifact import Manifest, read_manifest, sha256_file
from edgerun.core.errors import ArtifactError, EdgerunError, RunInterrupted, UsageError
from edgerun.runtime.llm import LLMRequest, bench_requests

from .cells import Cell, CellFailure, check_store, for_each_device, run_cell

log = logging.getLogger("edgerun.llm")

#: Control tokens that end a turn in the chat templates of common instruct models (besides EOS).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "</s>")


def llm_manifest(artifact: str | Path | Manifest) -> Manifest:
    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact)
    if manifest.llm is None:
        raise UsageError(f"artifact {manifest.dir} is not an LLM (its manifest has no 'llm' section).",
                         hint="Export a GGUF (llama, qwen2/3, gemma/2/3, phi3) or smollm2-135m: "
                              "edgerun export smollm2-135m --target rpi5 --scheme 8da4w.")
    return manifest


class ArtifactTokenizer:
    """The tokenizer an LLM artifact ships, verified against its manifest."""

    def __init__(self, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        self.manifest = manifest
        facts = manifest.llm.tokenizer   # edgerun.core.artifact.TokenizerFacts
        path = manifest.file(facts.file, "llm.tokenizer.file")
        if not path.is_file():
            raise ArtifactError(f"artifact {manifest.dir} has no tokenizer file {path.name}.",
                                hint="Re-export the model: the tokenizer is written beside model.pte.")
        want = facts.sha256
        if want and sha256_file(path) != want:
            raise ArtifactError(f"{path} does not match the sha256 in {manifest.dir / 'manifest.json'}: the tokenizer "
                                "was changed after export.", hint="Re-export the model.")
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ArtifactError(f"{path} is not a tokenizer the tokenizers library reads: {exc}") from None
        self.facts = facts

    @property
    def bos_id(self) -> int | None:
        return self.facts.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.facts.eos_id

    def stop_ids(self) -> tuple[int, ...]:
        ids = {self.eos_id} if self.eos_id is not None else set()
        for text in self.facts.special_tokens:
            if text in END_OF_TURN:
                tid = self.tok.token_to_id(text)
                if tid is not None:
                    ids.add(tid)
        return tuple(sorted(ids))

    def encode(self, text: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        if chat:
            template = self.facts.chat_template
            if not template:
                raise UsageError(f"--chat: artifact {self.manifest.dir} has no chat template (its GGUF had none).",
                                 hint="Drop --chat and give the prompt as plain text.")
            from edgerun.export.llm.chat import render_chat

            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": text}]
            bos = self.tok.id_to_token(self.bos_id) if self.bos_id is not None else ""
            eos = self.tok.id_to_token(self.eos_id) if self.eos_id is not None else ""
            text = render_chat(template, messages, bos_token=bos or "", eos_token=eos or "",
                               source=f"the chat template of artifact {self.manifest.dir}")
        # llama.cpp's llama_tokenize(add_special=True, parse_special=True); a BOS the template already
        # wrote is not doubled
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.facts.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        if self.facts.add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


class TokenStream:
    """Turns the runner's stdout chunks into text as tokens arrive (``on_stdout`` of a device exec):
    the first timed repetition's ``token`` lines, decoded incrementally (a character split across
    tokens is held back until it is whole)."""

    def __init__(self, decode: Callable[[Sequence[int]], str], on_text: Callable[[str], None],
                 stop_ids: Sequence[int] = ()) -> None:
        from edgerun.runtime.protocol import LineParser

        self._decode, self._on_text, self._stop = decode, on_text, set(stop_ids)
        self._lines = LineParser()
        self.ids: list[int] = []
        self._shown = ""

    def __call__(self, chunk: bytes) -> None:
        from edgerun.runtime.protocol import Token

        for line in self._lines.feed(chunk):
            if not isinstance(line, Token) or line.warmup or line.repeat != 0 or line.id in self._stop:
                continue
            self.ids.append(line.id)
            text = self._decode(self.ids)
            if text.endswith("\ufffd"):
                continue
            if text.startswith(self._shown):
                delta = text[len(self._shown):]
            else:  # a merge changed earlier text: show from where it differs
                delta = text
            self._shown = text
            if delta:
                self._on_text(delta)


def reexport_command(manifest: Manifest, max_context: int) -> str:
    """The command that exports this artifact's model again with another KV cache length: its model (a
    GGUF by the path it was read from), target and recipe; a fine-tuned artifact's is the fine-tune's
    ``--export-to`` (the weights came from a device run, not from a file ``export`` reads)."""
    import shlex

    m = manifest.model
    if manifest.lineage:
        return (f"edgerun finetune {shlex.quote(str(manifest.lineage.base_model or m.name))} … "
                f"--export-to DIR --max-context {max_context}")
    model = m.origin if m.source == "gguf" and m.origin else m.name
    out = f"{Path(str(manifest.dir)).name}-ctx{max_context}" if manifest.dir else f"out-ctx{max_context}"
    return (f"edgerun export {shlex.quote(model)} --target {shlex.quote(manifest.target.name)} "
            f"--scheme {shlex.quote(manifest.scheme.spec)} --max-context {max_context} -o {shlex.quote(out)}")


def context_warning(manifest: Manifest, prompt_tokens: int, max_new_tokens: int) -> str | None:
    """A sentence for a person before a generation that cannot finish: prompt + ``-n`` is more than the
    program's max context (the KV cache length it was exported with), so the run would stop early with
    ``stop: context``. Names the room left and the re-export command with a context that fits (the next
    power of two, at most what the model was trained for). None when the request fits."""
    llm = manifest.llm
    # every token but the last generated one takes a position: the prompt's and each fed back to decode
    need = prompt_tokens + max_new_tokens - 1
    if llm is None or need <= llm.max_context:
        return None
    room = max(0, llm.max_context - prompt_tokens + 1)
    fits = 1 << (need - 1).bit_length()
    trained = llm.context_length
    if trained and fits > trained:
        fits = max(trained, llm.max_context)
    advice = (f"re-export with a longer context: {reexport_command(manifest, fits)}" if fits > llm.max_context
              else "the model was trained for no longer context; ask for fewer tokens (-n)")
    return (f"the prompt is {prompt_tokens} tokens and -n asks for {max_new_tokens} more, but artifact "
            f"{manifest.dir} holds {llm.max_context} positions (its KV cache, "
            f"{llm.kv_cache_bytes:,} bytes): at most {room} new tokens fit before 'stop: context'; {advice}")


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    # "auto" (as profile's default): the runner times decode steps at 1 thread and every core and keeps
    # the faster; the record's provenance.threads_auto holds that trial. 0: the runtime's default pool.
    threads: int | str = "auto"
    chat: bool = False
    system: str | None = None
    stop_ids: tuple[int, ...] = ()      # besides the tokenizer's EOS / end-of-turn ids
    ignore_stop: bool = False
    repeat: int = 1
    warmup: int = 0
    timeout_s: float = 1800.0
    variant: str = "full"


def _run_llm(manifest: Manifest, device, request: LLMRequest, *, threads: int | str, seed: int, warmup: int,
             timeout_s: float, variant: str, store_path, decode_text=None, on_stdout=None, sweep_id=None,
             cell: Cell | None = None, warnings: Sequence[str] = (), postprocess=None):
    """One LLM run on an open device: deploy, run, analyse, store (``warnings`` added to the record's,
    ``postprocess(record) -> record`` before it is stored). Returns the record."""
    from edgerun.runtime.analysis import AnalysisSettings, analyse
    from edgerun.runtime.runner import AUTO_THREADS, RunOptions

    if threads == AUTO_THREADS and device.info().emulated:
        threads = 0  # an emulator's speed says nothing about the board: no trial, the default pool (as profile)
    mode = dataclasses.replace(request, options=RunOptions(warmup=warmup, threads=threads, seed=seed))
    settings = AnalysisSettings(vector=None, llm_request=mode, decode_text=decode_text, sweep_id=sweep_id,
                                cell=cell.key if cell else None)
    def analysed(run):
        record = analyse(run, manifest, settings)
        if warnings:
            record = dataclasses.replace(record, warnings=(*warnings, *record.warnings))
        return postprocess(record) if postprocess is not None else record

    return run_cell(manifest, device, mode, analysed, store_path=store_path,
                    variant=variant, timeout=timeout_s, on_stdout=on_stdout)


def generate(artifact: str | Path | Manifest, device_name: str, prompt: str, settings: GenerateSettings = GenerateSettings(),
             *, prompt_ids: Sequence[int] | None = None, store_path=None, inventory: str | None = None,
             on_text: Callable[[str], None] | None = None, on_warning: Callable[[str], None] | None = None):
    """``edgerun generate``: returns ``(record, prompt_ids)``; ``on_text`` sees the text as it is generated.

    A request that cannot fit the artifact's max context (:func:`context_warning`) is warned about before
    the device is touched: to ``on_warning`` (default: the log), and kept among the record's warnings."""
    from edgerun.devices.inventory import resolve_device

    manifest = llm_manifest(artifact)
    manifest.verified_pte()
    manifest.verified_data()  # a swapped .ptd fails here too, before any device
    tok = ArtifactTokenizer(manifest)
    ids = list(prompt_ids) if prompt_ids is not None else tok.encode(prompt, chat=settings.chat, system=settings.system)
    if not ids:
        raise UsageError("the prompt is empty: it encodes to no tokens.", hint="Give --prompt some text.")
    stops = tuple(sorted(set(tok.stop_ids()) | set(settings.stop_ids)))
    request = LLMRequest(mode="generate", prompt_ids=tuple(ids), max_new_tokens=settings.max_new_tokens,
                         stop_ids=stops, ignore_stop=settings.ignore_stop, temperature=settings.temperature,
                         top_k=settings.top_k, top_p=settings.top_p, repeat=settings.repeat, test="generate",
                         text=prompt)
    request.check(manifest)
    warning = context_warning(manifest, len(ids), settings.max_new_tokens)
    if warning is not None:
        (on_warning or log.warning)(warning)
    stream = TokenStream(tok.decode, on_text, stops) if on_text is not None else None
    check_store(store_path)
    with resolve_device(device_name, inventory) as dev:
        record = _run_llm(manifest, dev, request, threads=settings.threads, seed=settings.seed,
                          warmup=settings.warmup, timeout_s=settings.timeout_s, variant=settings.variant,
                          store_path=store_path, decode_text=tok.decode, on_stdout=stream,
                          warnings=(warning,) if warning else ())
    return record, ids


#: kept in a profiled bench-llm record: its tokens/s are not comparable with an unprofiled run's
PROFILED_WARNING = ("profiled (--profile): the runner recorded an ETDump event per operator and delegate call, "
                    "so these tokens/s include the tracing's overhead; compare speed with runs without --profile")


@dataclasses.dataclass(frozen=True)
class BenchLLMSettings:
    prompts: tuple[int, ...] = (64,)
    generate: tuple[int, ...] = (32,)
    repetitions: int = 5
    threads: tuple[int | str, ...] = (0,)  # counts, or "auto" (the runner's decode trial picks)
    warmup: int = 1
    seed: int = 0
    timeout_s: float = 3600.0
    variant: str = "full"
    profile: bool = False  # an ETDump per test: the record's operator table (a decode step's, for tgN)

    def __post_init__(self) -> None:
        if not self.prompts and not self.generate:
            raise UsageError("bench-llm needs at least one test: -p (prompt lengths) or -n (generated tokens).")
        for name, values in (("-p", self.prompts), ("-n", self.generate)):
            if any(not isinstance(v, int) or v < 1 for v in values):
                raise UsageError(f"{name} takes comma-separated integers >= 1, got {','.join(map(str, values))}.")
        if self.repetitions < 1:
            raise UsageError(f"-r/--repetitions must be >= 1, got {self.repetitions}.")


def bench_llm(artifact: str | Path | Manifest, devices: Sequence[str], settings: BenchLLMSettings = BenchLLMSettings(),
              *, store_path=None, inventory: str | None = None, on_progress: Callable[[str], None] | None = None,
              sweep_id: str | None = None) -> list:
    """``edgerun bench-llm``: records and :class:`CellFailure`s, devices concurrently."""
    if not devices:
        raise UsageError("no device given.", hint="Use --device NAME_OR_URI (e.g. local://).")
    manifest = llm_manifest(artifact)
    manifest.verified_pte()
    manifest.verified_data()  # a swapped .ptd fails here too, before any device
    requests = bench_requests(settings.prompts, settings.generate, settings.repetitions, etdump=settings.profile)
    for r in requests:
        r.check(manifest)
    check_store(store_path)

    def cells(name: str) -> list[tuple[Cell, LLMRequest]]:
        return [(Cell(model=manifest.model.name, test=req.test, device=name, threads=threads), req)
                for threads in settings.threads for req in requests]

    def one(name: str, dev) -> list:
        out: list = []
        for cell, req in cells(name):
            if on_progress:
                on_progress(f"{name}: {req.test} threads={cell.threads or 'default'}")
            try:
                out.append(_run_llm(manifest, dev, req, threads=cell.threads, seed=settings.seed,
                                    warmup=settings.warmup, timeout_s=settings.timeout_s, variant=settings.variant,
                                    store_path=store_path, sweep_id=sweep_id, cell=cell,
                                    warnings=(PROFILED_WARNING,) if settings.profile else ()))
            except RunInterrupted:
                raise
            except EdgerunError as exc:
                log.warning("%s %s: %s", name, req.test, exc.paragraph())
                out.append(CellFailure(name, cell.threads, exc, cell))
        return out

    return for_each_device(devices, one, inventory=inventory, cells_of=lambda name: [c for c, _ in cells(name)])


def heldout_ids(manifest: Manifest, tok: ArtifactTokenizer) -> tuple[list[int], int]:
    """The token ids the export measured perplexity on and the export's window, so device and eager
    figures are comparable: the ids the artifact carries (checked against their sha256 by
    :meth:`Manifest.heldout_ids`); for an artifact made before edgerun stored them, the held-out text
    edgerun ships tokenised with the artifact's tokenizer."""
    ppl = manifest.llm.quality.perplexity
    window = min(ppl.window if ppl is not None else manifest.llm.max_context, manifest.llm.max_context)
    stored = manifest.heldout_ids()
    if stored is not None:
        return list(stored), window
    from edgerun.export.llm.export import DATA

    return tok.tok.encode((DATA / "heldout.txt").read_text()).ids, window


#: ``--text``: the largest text file scored on a device (every token of it is a forward position there)
MAX_TEXT_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class ScoreText:
    """A person's own text to score on the device (``profile --text FILE``): its ids under the artifact's
    tokenizer, and the file's name, size and sha256 (stored in the record's ``llm.request``, so runs on
    different texts are never compared as one test)."""

    path: str
    sha256: str
    bytes: int
    ids: tuple[int, ...]

    def describe(self) -> dict:
        return {"text": Path(self.path).name, "text_sha256": self.sha256, "text_bytes": self.bytes}


def read_score_text(manifest: Manifest, path: str | Path) -> ScoreText:
    """Read and tokenise ``path`` for scoring on the device; a missing, oversized, non-UTF-8 or too short
    file is refused naming the file (before any device is touched)."""
    import hashlib

    manifest = llm_manifest(manifest)
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--text {path}: no such file.", hint="Give a UTF-8 text file to score, e.g. --text notes.txt.")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--text {p}: cannot be read ({exc.strerror or exc}).") from None
    if len(data) > MAX_TEXT_BYTES:
        raise UsageError(f"--text {p} is larger than {MAX_TEXT_BYTES >> 20} MiB, the most scored on a device.",
                         hint="Score an excerpt: every token is a forward position on the device.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--text {p} is not UTF-8 text: byte {exc.start} ({data[exc.start]:#04x}) cannot be "
                         "decoded.", hint="Convert it first, e.g. iconv -t UTF-8.") from None
    ids = ArtifactTokenizer(manifest).encode(text)
    if len(ids) < 2:
        raise UsageError(f"--text {p} is {len(ids)} token(s) under the artifact's tokenizer; scoring needs at "
                         "least 2.")
    return ScoreText(path=str(p), sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), ids=tuple(ids))


def perplexity_on_device(artifact: str | Path | Manifest, device, *, threads: int = 0, store_path=None,
                         timeout_s: float = 3600.0, variant: str = "full", max_tokens: int | None = None,
                         text: "str | Path | ScoreText | None" = None):
    """Score the export's held-out text on an open device; the record's ``llm.perplexity`` sits beside
    the export's eager figure (``llm.eager_perplexity``) when text and windows are the same.

    ``text``: score this file instead (:func:`read_score_text`), in the export's windows; the record
    names the file and its sha256 in ``llm.request`` and has no eager figure (the export measured eager
    on its own text, not this one)."""
    manifest = llm_manifest(artifact)
    tok = ArtifactTokenizer(manifest)
    ids, window = heldout_ids(manifest, tok)
    label, own = "edgerun export/llm/data/heldout.txt", None
    if text is not None:
        own = text if isinstance(text, ScoreText) else read_score_text(manifest, text)
        ids, label = list(own.ids), own.path
    if max_tokens:
        ids = ids[:max_tokens]
    request = LLMRequest(mode="score", prompt_ids=tuple(ids), window=window, test="score", text=label)
    request.check(manifest)

    def own_text(record):
        llm = dataclasses.replace(record.llm, eager_perplexity=None, export_program_perplexity=None,
                                  request={**record.llm.request, **own.describe()})
        return dataclasses.replace(record, llm=llm)

    return _run_llm(manifest, device, request, threads=threads, seed=0, warmup=0, timeout_s=timeout_s,
                    variant=variant, store_path=store_path, postprocess=own_text if own is not None else None)
