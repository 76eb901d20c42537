"""LLM runs: what to ask the runner's LLM mode (``--llm generate|score``) and what its lines mean.

* :class:`LLMRequest` is one LLM run's request (a prompt of token ids or a random one, generation
  and sampling settings, or text ids to score) and builds the runner flags; :meth:`LLMRequest.check`
  refuses a request the artifact cannot take (prompt longer than its max context, ids outside its
  vocabulary) before a device is touched;
* :func:`llm_metrics` reads a finished LLM run (the typed ``prefill``/``token``/``generation`` or
  ``score``/``perplexity`` lines of :mod:`edgerun.runtime.protocol`) into the record's
  :class:`~edgerun.runtime.record.LLMMetrics` and the samples its latency statistics are made of.

Tokenising text is the hall's job (the artifact's ``tokenizer.json``); this module sees token ids only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

from edgerun.core.artifact import Manifest
from edgerun.core.errors import UsageError

from .protocol import RunnerResult
from .record import LLMMetrics, Sample
from .runner import RunOptions, runner_argv

if TYPE_CHECKING:  # pragma: no cover
    from .modes import RunContext
    from .protocol import RunArtifacts

MODES = ("generate", "score")


@dataclass(frozen=True)
class LLMRequest:
    """One run of the runner's LLM mode; ``test`` names it in records (``pp64``, ``tg32``, ``generate``, ``score``).

    A :class:`~edgerun.runtime.modes.RunMode`: its prompt ids go to the device as ``tokens.txt`` (kept in
    the run directory too); a score run's per-token log-probabilities come back as ``logprobs.npy``,
    listed in the run's ``outputs``. ``options``: the common runner flags (``warmup`` counts warm-up
    repetitions, ``seed`` seeds sampling and random prompts, ``threads``)."""

    mode_name: ClassVar[str] = "llm"
    remote_dirs: ClassVar[tuple[str, ...]] = ()
    deploy_vectors: ClassVar[bool] = False
    deploy_dataset: ClassVar[bool] = False

    mode: str = "generate"
    prompt_ids: tuple[int, ...] = ()
    random_prompt: int = 0            # a prompt of N ids drawn from the seed (llama-bench's pp/tg tests)
    max_new_tokens: int = 32
    stop_ids: tuple[int, ...] = ()
    ignore_stop: bool = False         # always generate max_new_tokens (benchmarks)
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    repeat: int = 1                   # timed repetitions of prefill + decode
    window: int = 0                   # score: tokens per window (0: the program's max context)
    test: str = "generate"
    text: str | None = None           # the prompt/text as a person gave it
    options: RunOptions = RunOptions()
    etdump: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"LLM mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        for name, lo in (("max_new_tokens", 1), ("repeat", 1), ("top_k", 0), ("window", 0), ("random_prompt", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}.")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < 1e6):
            raise UsageError(f"--temperature must be a number >= 0, got {self.temperature!r}.")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p!r}.")
        if bool(self.prompt_ids) == bool(self.random_prompt):
            raise UsageError("an LLM run needs either prompt token ids or a random prompt length, not both"
                             if self.prompt_ids else "an LLM run needs a prompt (token ids) or a random prompt length.")
        if self.mode == "score" and len(self.prompt_ids) < 2:
            raise UsageError("scoring needs a text of at least 2 tokens.")

    def check(self, manifest: Manifest | None) -> None:
        """Refuse what the artifact cannot take, naming the option and the artifact's limit."""
        if manifest is None:
            raise UsageError("an LLM run needs an LLM artifact (a directory with manifest.json), not a bare program.")
        llm = manifest.llm
        if llm is None:
            raise UsageError(f"artifact {manifest.dir} is not an LLM (its manifest has no 'llm' section).",
                             hint="Export a GGUF or the smollm2-135m zoo model: edgerun export smollm2-135m "
                                  "--target rpi5 --scheme 8da4w.")
        n = len(self.prompt_ids) or self.random_prompt
        if self.mode == "generate" and n > llm.max_context:
            raise UsageError(f"the prompt has {n} tokens; artifact {manifest.dir} was exported with a max context "
                             f"of {llm.max_context}.",
                             hint="Shorten the prompt, or export again with a larger --max-context.")
        if self.window > llm.max_context:
            raise UsageError(f"--window {self.window} is larger than the artifact's max context {llm.max_context}.")
        bad = [i for i in (*self.prompt_ids, *self.stop_ids) if not 0 <= i < llm.vocab_size]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the artifact's vocabulary (0..{llm.vocab_size - 1}).")

    def runner_args(self, tokens_path: str | None, logprobs_path: str | None = None) -> list[str]:
        """The LLM flags of the runner's argv; ``tokens_path``: the prompt ids' file on the executing side."""
        args = ["--llm", self.mode]
        if self.random_prompt:
            args += ["--random-prompt", str(self.random_prompt)]
        else:
            if tokens_path is None:
                raise ValueError("prompt ids need a tokens file on the executing side")
            args += ["--tokens", tokens_path]
        if self.mode == "generate":
            args += ["--max-new-tokens", str(self.max_new_tokens), "--repeat", str(self.repeat)]
            for i in self.stop_ids:
                args += ["--stop-id", str(i)]
            if self.ignore_stop:
                args.append("--ignore-stop")
            if self.temperature > 0:
                args += ["--temperature", repr(float(self.temperature))]
                if self.top_k:
                    args += ["--top-k", str(self.top_k)]
                if self.top_p < 1:
                    args += ["--top-p", repr(float(self.top_p))]
        else:
            if self.window:
                args += ["--window", str(self.window)]
            if logprobs_path:
                args += ["--logprobs", logprobs_path]
        return args

    def tokens_file_text(self) -> str | None:
        return " ".join(map(str, self.prompt_ids)) + "\n" if self.prompt_ids else None

    # -- the RunMode protocol

    def run_json(self) -> dict:
        return {"options": dataclasses.asdict(self.options), "vector": None, "dataset": False, "llm": self.to_json()}

    def push(self, ctx: "RunContext") -> None:
        text = self.tokens_file_text()
        if text is not None:
            local = ctx.write("tokens.txt", text)
            ctx.pushed["tokens"] = ctx.push({"tokens.txt": local}).paths["tokens.txt"]

    def argv(self, ctx: "RunContext") -> list[str]:
        dep = ctx.deployment
        logprobs = ctx.remote("logprobs.npy") if self.mode == "score" else None
        return runner_argv(dep.bundle, dep.program, options=self.options, bundle_dir=dep.bundle_dir, data=dep.data,
                           etdump=ctx.remote("run.etdp") if self.etdump else None,
                           llm_args=self.runner_args(ctx.pushed.get("tokens"), logprobs))

    def collect(self, ctx: "RunContext", result: RunnerResult, run: "RunArtifacts") -> None:
        if self.etdump:
            run.etdump = ctx.pull(ctx.remote("run.etdp"), ctx.run_dir / "run.etdp")
        if self.mode == "score":
            run.outputs.append(ctx.pull(ctx.remote("logprobs.npy"), ctx.run_dir / "logprobs.npy"))

    def to_json(self) -> dict:
        return {"mode": self.mode, "test": self.test, "prompt_tokens": len(self.prompt_ids) or self.random_prompt,
                "random_prompt": bool(self.random_prompt), "max_new_tokens": self.max_new_tokens,
                "stop_ids": list(self.stop_ids), "ignore_stop": self.ignore_stop, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "repeat": self.repeat, "window": self.window}


def bench_requests(prompts: Sequence[int], generate: Sequence[int], repeat: int, *,
                   etdump: bool = False) -> list[LLMRequest]:
    """llama-bench's grid: ``ppP`` (a random prompt of P tokens, its prefill timed) and ``tgN`` (N decode
    forwards after a one-token prompt, no stop ids), each repeated ``repeat`` times. ``etdump``: each test
    also records an ETDump of its timed forwards -- for ``tgN`` every forward is single-token (the one-token
    prompt's prefill has a decode step's shapes), so its operator table is a decode step's."""
    out = [LLMRequest(random_prompt=p, max_new_tokens=1, ignore_stop=True, repeat=repeat, test=f"pp{p}",
                      etdump=etdump) for p in prompts]
    out += [LLMRequest(random_prompt=1, max_new_tokens=n + 1, ignore_stop=True, repeat=repeat, test=f"tg{n}",
                       etdump=etdump) for n in generate]
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def llm_metrics(result: RunnerResult, request: LLMRequest | None, manifest: Manifest,
                decode_text=None) -> tuple[tuple[Sample, ...], LLMMetrics]:
    """The samples (what the record's latency statistics describe) and the LLM figures of a finished run.

    Samples: ``score`` — one per window (its forward); a prefill-only test (``ppP``, one new token) —
    one per repetition (the prefill); otherwise one per decode forward (per-token decode latency),
    warm-up repetitions flagged. ``decode_text(ids) -> str`` turns the generated ids into text."""
    llm = manifest.llm
    req = request.to_json() if request else {}
    test = request.test if request else (result.llm.mode if result.llm else "llm")
    common = dict(test=test, mode=result.llm.mode if result.llm else req.get("mode"),
                  max_context=result.llm.max_context if result.llm else (llm.max_context if llm else None),
                  kv_cache_bytes=llm.kv_cache_bytes if llm else None,
                  kv_cache_bytes_per_token=llm.kv_cache_bytes_per_token if llm else None,
                  weight_bytes=sum(llm.weight_bytes_by_dtype.values()) if llm and llm.weight_bytes_by_dtype else None,
                  request=req)
    ppl = result.perplexity
    if ppl is not None:
        samples = tuple(Sample(index=w.window, warmup=False, execute_ns=w.execute_ns) for w in result.score_windows)
        eager = llm.quality.perplexity if llm else None   # edgerun.core.artifact.Perplexity
        same_window = eager is not None and eager.window == ppl.window and eager.tokens == ppl.tokens + 1
        return samples, LLMMetrics(
            **common, prompt_tokens=ppl.tokens + 1, perplexity=ppl.perplexity, perplexity_tokens=ppl.tokens,
            perplexity_window=ppl.window,
            eager_perplexity=eager.eager_fp32 if same_window else None,
            export_program_perplexity=eager.program if same_window else None,
            prefill_tokens_per_s=ppl.tokens * 1e9 / ppl.execute_ns_total if ppl.execute_ns_total else None)
    gens = [g for g in result.generations if not g.warmup]
    if not gens:
        return (), LLMMetrics(**common)
    prefill_only = all(g.decode_forwards == 0 for g in gens)
    if prefill_only:
        samples = tuple(Sample(index=g.repeat, warmup=g.warmup, execute_ns=g.prefill_ns)
                        for g in result.generations)
    else:
        samples = tuple(Sample(index=k, warmup=t.warmup, execute_ns=t.execute_ns, wall_ns=t.wall_ns)
                        for k, t in enumerate(t for t in result.tokens if t.source == "decode"))
    pre_mean, pre_sd = _mean_sd([g.prefill_tokens_per_s for g in gens])
    dec_mean, dec_sd = _mean_sd([g.decode_tokens_per_s for g in gens])
    ttft = statistics.median(g.ttft_ns for g in gens) / 1e6
    last = gens[-1]
    text = None
    if decode_text is not None:
        try:
            text = decode_text(list(last.ids))
        except Exception as exc:  # a tokenizer problem must not lose the measured run
            text = f"(could not decode the ids: {exc})"
    return samples, LLMMetrics(
        **common, prompt_tokens=last.prompt_tokens, new_tokens=last.new_tokens, decode_forwards=last.decode_forwards,
        repetitions=len(gens), stop=last.stop, ids=tuple(last.ids), text=text, ttft_ms=ttft,
        prefill_tokens_per_s=pre_mean, prefill_tokens_per_s_sd=pre_sd,
        decode_tokens_per_s=None if prefill_only else dec_mean,
        decode_tokens_per_s_sd=None if prefill_only else dec_sd,
        same_ids_every_repetition=len({g.ids for g in gens}) == 1)
