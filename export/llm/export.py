"""Export an LLM spec: GGUF -> Llama with its KV cache as buffers -> (recipe: quantize ...) -> torch.export
with a dynamic prompt length -> XNNPACK -> a verified artifact with ``tokenizer.json``, the held-out
token ids and ``llm`` facts.

It runs on the pipeline's stage runner (:mod:`..stages`: the plan checked before work, progress and
warnings reported through the same callbacks, the temporary directory published by rename) and reuses
its versions, recipe identity and test-vector verification; what is LLM-specific lives here: dynamic
shapes, the LLM handlers of the recipes (:mod:`.quantize`), and the LLM checks — per-position logits
agreement on real prompts and perplexity of eager fp32 vs the program on the held-out text edgerun
ships (``data/heldout.txt``). The ids that text becomes are stored in the artifact
(``heldout_ids.npy``, named with its sha256 in ``llm.quality.perplexity``), so a later on-device score
uses exactly the ids the export scored, whatever tokenizer or text a later edgerun has. They are the
text as ``llama-perplexity`` tokenizes it (BOS first when the GGUF adds BOS); the prompts, too, start
with BOS when the GGUF adds it, as llama.cpp prompts a model.

When llama.cpp is built here (:func:`.llamacpp.find`; an export never builds or downloads it), the
reference stage also runs ``llama-perplexity`` on the GGUF file itself over the same ids, and eager fp32
and the program are scored under *its* chunk rule (:func:`perplexity_chunks`: llama-perplexity cannot be
given edgerun's windows), stored as ``llm.quality.llamacpp`` beside edgerun's own figures.

Stages: resolve -> load model -> reference (eager fp32's perplexity on the held-out ids, measured before
any recipe step so the fp32 model can be dropped as soon as a step has made its replacement: one model's
weights fewer held through export, lowering and verification) -> one stage per recipe step (prune, factorize
(:mod:`.compress`), quantize; after the last prune/factorize step the eager model's perplexity is measured
again, and the program is judged from it: what pruning costs is the step's result, in its facts)
-> export -> lower -> write -> verify. The long ones report their fraction through
:func:`~..stages.report_progress`: quantize per layer (:mod:`.quantize`), lower per delegate partition
(:func:`_partition_progress`), reference and verify per window, prompt and greedy token. Between stages
the big objects a later stage does not read are released (the captured program after lowering, the
edge/ExecuTorch program managers after writing), and the ETRecord is saved without weight values
(:func:`save_compact_etrecord`).

Options an LLM export cannot honour are refused before any work: ``calibration`` (its recipes quantize
weights only; the prune/lowrank steps that read activations use ``data/train.txt``, see
:func:`calibration_windows`), ``vectors_file`` (its test vectors are the built-in prompts) and
``vectors`` beyond the number of prompts.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgerun.core.artifact import (
    STATUS_FAILED, STATUS_OK, GreedyCheck, LlamaCppPerplexity, LLMFacts, LLMQuality, LogitsAgreement, Manifest,
    ModelRef, Operators, Perplexity, RecipeIdentity, TargetRef, TensorSpec, Thresholds, sha256_file,
    write_manifest,
)

from edgerun.core.errors import EdgerunError

from ..errors import ExportError, UsageError, VerificationFailed
from ..options import ExportOptions
from ..recipes import Recipe, RecipeChain, RecipeContext
from ..stages import (OnProgress, OnStage, OnStageDone, OnWarning, Plan, Progress, Stage, Work, artifact_dir,
                      report_progress)
from .gguf_model import CACHE_POSITIONS, cache_positions
from .zoo import LLMSpec

DATA = Path(__file__).resolve().parent / "data"
HELDOUT_TEXT = "edgerun export/llm/data/heldout.txt"
HELDOUT_IDS = "heldout_ids.npy"
#: the calibration text of recipes that read activations (prune-ffn/prune-heads importance, lowrank whiten)
CALIBRATION_FILE = "train.txt"
#: the chunking of ``llm.quality.llamacpp``: llama-perplexity's own (see :meth:`.llamacpp.LlamaCpp.perplexity`),
#: which edgerun follows for the program's figure there (llama-perplexity cannot be given edgerun's windows)
LLAMACPP_RULE = ("llama-perplexity's: chunks of ctx ids each from an empty cache, the first id of each replaced "
                 "by BOS when the GGUF adds BOS, only the ids after the first half scored")
log = logging.getLogger("edgerun.export")
PROMPTS = ("The capital of France is", "Water boils at one hundred degrees", "Once upon a time, in a small village",
           "The quick brown fox jumps over the lazy dog")


def _runtime_method(pte: Path, data: Path | None = None):
    import executorch.kernels.quantized  # noqa: F401  registers quantized_decomposed::embedding_* kernels
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(pte), data_path=str(data) if data else None).load_method("forward")


def _logits_fn(model=None, method=None):
    """``run(tokens, input_pos) -> logits`` of the eager model or a program's method, giving either the
    cache's valid prefix ``0..input_pos[-1]`` as ``cache_positions`` when it takes one (every program since
    layout 3, and the eager model, whose attention then reads the prefix alone)."""
    import torch

    prefix = method is None or method.metadata.num_inputs() == 3

    def run(tokens, pos):
        args = [tokens, pos]
        if prefix:
            args.append(cache_positions(pos))
        if method is not None:
            return method.execute(args)[0]
        with torch.no_grad():
            return model(*args)
    return run


class _Ticker:
    """Units of a stage's work done so far, reported as the stage's progress fraction."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = max(1, int(total)), what, 0

    def __call__(self, detail: str | None = None) -> None:
        self.done += 1
        report_progress(self.done, self.total, f"{self.what} {min(self.done, self.total)}/{self.total}"
                        + (f": {detail}" if detail else ""))

    def wrap(self, run, detail: str):
        """``run`` that ticks once per call."""
        def ticking(*args):
            out = run(*args)
            self(detail)
            return out
        return ticking


def perplexity_windows(ids: Sequence[int], window: int) -> int:
    """How many windows :func:`perplexity` runs over ``ids``."""
    return len(range(0, max(0, len(ids) - 1), window))


def perplexity(run, ids: Sequence[int], window: int) -> float:
    """Perplexity of ``ids`` in windows of ``window`` tokens, each prefilled from position 0."""
    import torch

    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = list(ids[start:start + window + 1])
        if len(chunk) < 2:
            break
        inp = torch.tensor([chunk[:-1]], dtype=torch.long)
        logits = run(inp, torch.arange(inp.shape[1], dtype=torch.long))[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(chunk[1:])
        nll -= float(logp[torch.arange(len(target)), target].sum())
        count += len(target)
    return math.exp(nll / count)


def llamacpp_ctx(n_ids: int, max_context: int) -> int:
    """The chunk length of the llama.cpp comparison: the program's whole context, or half the held-out ids
    when they are fewer than two contexts (llama-perplexity needs at least two chunks' worth)."""
    return min(max_context, n_ids // 2)


def perplexity_chunks(run, ids: Sequence[int], ctx: int, bos_id: int | None = None) -> tuple[float, int]:
    """``(perplexity, ids scored)`` of ``ids`` under llama-perplexity's rule (:data:`LLAMACPP_RULE`): chunk
    ``i`` is ``ids[i*ctx:(i+1)*ctx]`` (the tail past the last whole chunk unread), its first id replaced by
    ``bos_id`` when given, prefilled from position 0; the logits at ``ctx//2 .. ctx-2`` score the next id;
    NLL from a float64 log-softmax over the whole vocabulary."""
    import torch

    nll, count = 0.0, 0
    first = ctx // 2
    for i in range(len(ids) // ctx):
        chunk = list(ids[i * ctx:(i + 1) * ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        inp = torch.tensor([chunk], dtype=torch.long)
        logits = run(inp, torch.arange(ctx, dtype=torch.long))[0].double()
        logp = torch.log_softmax(logits[first:ctx - 1], dim=-1)
        target = torch.tensor(chunk[first + 1:])
        nll -= float(logp[torch.arange(len(target)), target].sum())
        count += len(target)
    if count == 0:
        raise ValueError(f"perplexity_chunks: {len(ids)} ids make no scored chunk of {ctx}")
    return math.exp(nll / count), count


def _position_agreement(eager, program, prompts: Sequence[list[int]]) -> LogitsAgreement:
    import torch

    top1, snrs = [], []
    for ids in prompts:
        tokens, pos = torch.tensor([ids]), torch.arange(len(ids))
        a = np.asarray(eager(tokens, pos)[0], dtype=np.float64)
        b = np.asarray(program(tokens, pos)[0], dtype=np.float64)
        top1.extend((a.argmax(-1) == b.argmax(-1)).tolist())
        noise = ((a - b) ** 2).mean(-1)
        snrs.extend((10 * np.log10((a ** 2).mean(-1) / np.maximum(noise, 1e-30))).tolist())
    return LogitsAgreement(positions=len(top1), top1_agreement=float(np.mean(top1)), min_snr_db=float(np.min(snrs)),
                           median_snr_db=float(np.median(snrs)))


def save_compact_etrecord(etrecord, path: Path) -> None:
    """Save ``etrecord`` (ExecuTorch's ETRecord of this export) without the values of its weights.

    An ETRecord holds the exported and the edge program, each serialized with its whole state dict: for
    an LLM that is the weights twice more beside the ``.pte`` (SmolLM2-135M 8da4w: 372 MB, 2.6x the
    program). The Inspector needs the graphs, the debug-handle and delegate maps (to name the operators
    of an ETDump), not the weights' values; so every weight and constant becomes a ``meta`` tensor (its
    shape and dtype kept, no data) before saving. ``parse_etrecord`` reads the result as usual. The
    ETRecord is changed in place: call this when the export no longer needs its programs."""
    import torch

    def strip(ep) -> None:
        for table in (ep.state_dict, ep.constants):
            for name, t in list(table.items()):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    m = t.detach().to("meta")
                    table[name] = torch.nn.Parameter(m, requires_grad=False) if isinstance(t, torch.nn.Parameter) else m

    programs = [etrecord.exported_program]
    edge = etrecord.edge_dialect_program
    programs += list(edge.values()) if isinstance(edge, dict) else [edge]
    for key, ep in (etrecord.graph_map or {}).items():
        programs.append(ep)
    for ep in programs:
        if ep is not None:
            strip(ep)
    etrecord.save(str(path))


def _mutated_buffers(exported) -> set[str]:
    """Names of the buffers the program writes (the KV cache). torch.export's graph keeps in-place ops
    until it is functionalized (``buffers_to_mutate`` is filled by ``run_decompositions``, which costs a
    whole retrace of the model): a buffer is also mutated when an op whose schema writes an argument
    (``index_copy_``'s ``self``) gets that buffer's placeholder."""
    import torch

    sig = exported.graph_signature
    mutated = set(sig.buffers_to_mutate.values())
    buffer_of = {spec.arg.name: spec.target for spec in sig.input_specs
                 if spec.kind.name == "BUFFER" and hasattr(spec.arg, "name")}
    for node in exported.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        for arg, value in zip(node.target._schema.arguments, node.args):
            if arg.alias_info is not None and arg.alias_info.is_write and getattr(value, "name", None) in buffer_of:
                mutated.add(buffer_of[value.name])
    return mutated


def _weight_bytes(exported) -> dict[str, int]:
    """Bytes of the program's weights (parameters and constant buffers, not the KV cache) by dtype;
    a tensor shared by two names (a tied weight) counts once."""
    mutable = _mutated_buffers(exported)
    seen, out = set(), {}
    for name, t in list(exported.state_dict.items()) + list(exported.constants.items()):
        if name in mutable or not hasattr(t, "dtype"):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        dt = str(t.dtype).replace("torch.", "")
        out[dt] = out.get(dt, 0) + t.numel() * t.element_size()
    return dict(sorted(out.items()))



# ---------------------------------------------------------------------------------------------
# resolve


def check_llm_options(options: ExportOptions) -> None:
    """Refuse what an LLM export cannot honour (before any work)."""
    if options.calibration:
        raise UsageError(f"--calibration {options.calibration}: an LLM export runs no calibration inputs from a file "
                         "(its recipes fp32, int8-dynamic and 8da4w quantize weights only, activations at run time; "
                         "prune-ffn, prune-heads and lowrank:whiten=true read the calibration text edgerun ships), so "
                         "the file would be ignored.", hint="Drop --calibration.")
    if options.vectors_file:
        raise UsageError(f"--vectors {options.vectors_file}: an LLM export's test vectors are its {len(PROMPTS)} "
                         "built-in prompts; it takes no file of test inputs.",
                         hint=f"Drop --vectors, or give a count up to {len(PROMPTS)}.")
    if options.vectors > len(PROMPTS):
        raise UsageError(f"--vectors {options.vectors}: an LLM export has {len(PROMPTS)} prompts to use as test "
                         "vectors.", hint=f"Give --vectors 1..{len(PROMPTS)}.")


def _plan(chain: RecipeChain) -> Plan:
    return Plan([
        Stage("load model", _load, needs=("spec", "max_context", "identity"),
              makes=("model", "module", "example", "gguf", "tok", "tok_facts", "identity", "heldout", "prompts",
                     "params", "config")),
        Stage("reference", _reference_stage, needs=("model", "heldout", "max_context", "spec", "gguf", "tok_facts"),
              makes=("ppl_fp32", "ppl_fp32_chunks", "llamacpp")),
        *[Stage(name, _step_stage(step, last=k == len(chain.transforms) - 1),
                needs=("module", "example", "target", "tok", "tok_facts", "max_context", "heldout", "ppl_fp32"),
                makes=("module",))
          for k, (name, step) in enumerate(chain.stages())],
        Stage("export", _export_stage, needs=("module", "example", "max_context"), makes=("exported", "weight_bytes")),
        Stage("lower", _lower_stage, needs=("exported", "target", "chain"), makes=("program", "shared")),
        Stage("write", _write_stage, needs=("program", "shared", "weight_bytes", "params", "config", "module", "tok",
                                            "tok_facts", "tmp", "prompts", "heldout"), makes=("manifest",)),
        Stage("verify", _verify_stage, needs=("manifest", "prompts", "heldout", "ppl_fp32", "ppl_fp32_chunks",
                                              "llamacpp", "limits"),
              makes=("verification", "llm")),
    ], given=("spec", "target", "chain", "options", "limits", "identity", "tmp", "progress", "max_context"))


# ---------------------------------------------------------------------------------------------
# the stages


def _load(w: Work) -> None:
    from .tokenizer import encode, tokenizer_from_gguf

    w.model, w.example, w.gguf = w.spec.build_llm(w.max_context)
    w.module = w.model
    w.params, w.config = int(sum(p.numel() for p in w.model.parameters())), w.model.config
    w.tok, w.tok_facts = tokenizer_from_gguf(w.gguf)
    # the held-out ids every later perplexity is measured on (stored by write, so a device scores exactly these):
    # the text as llama-perplexity tokenizes its file -- BOS first when the GGUF adds it (and EOS last when it
    # adds that), control-token text kept as plain text
    w.heldout = encode(w.tok, w.tok_facts, (DATA / "heldout.txt").read_text(), add_special=True, parse_special=False)
    # the prompts as llama.cpp prompts a model: BOS first when the GGUF adds it (never an EOS before generating)
    bos = [w.tok_facts.bos_id] if w.tok_facts.add_bos and w.tok_facts.bos_id is not None else []
    w.prompts = [(bos + encode(w.tok, w.tok_facts, p, add_special=False))[:w.max_context]
                 for p in PROMPTS][:w.options.vectors]
    w.gguf_sha256 = w.identity.model["gguf_sha256"]   # hashed by llm_recipe_identity before the load


def _reference_stage(w: Work) -> None:
    """The references the program is measured against, before any recipe step (the fp32 model is then no
    longer needed, and is dropped as soon as a step has made the module that replaces it): eager fp32's
    perplexity on the held-out ids; and, when llama.cpp is built here, ``llama-perplexity`` on the GGUF
    itself over the same ids (:func:`_llamacpp_perplexity`) with eager fp32's perplexity under its rule."""
    window = w.max_context - 1
    ref = _llamacpp_for(w)
    ctx = llamacpp_ctx(len(w.heldout), w.max_context)
    chunks = len(w.heldout) // ctx if ref is not None else 0
    tick = _Ticker(perplexity_windows(w.heldout, window) + (1 + chunks if ref is not None else 0), "window")
    w.ppl_fp32 = perplexity(tick.wrap(_logits_fn(model=w.model), "eager fp32 perplexity"), w.heldout, window)
    w.llamacpp, w.ppl_fp32_chunks = None, None
    if ref is None:
        return
    w.llamacpp = _llamacpp_perplexity(w, ref, ctx)
    tick(f"llama-perplexity -c {ctx}")
    if w.llamacpp is not None:   # eager fp32 under llama.cpp's rule, to stand beside its figure
        w.ppl_fp32_chunks = perplexity_chunks(tick.wrap(_logits_fn(model=w.model), "eager fp32, llama.cpp's chunks"),
                                              w.heldout, ctx, w.llamacpp["bos_id"])[0]


def _gguf_type(g) -> str:
    """The type of most of the GGUF's weight elements (``Q4_1``; ``F32`` for a float32 file)."""
    sizes: dict[str, int] = {}
    for t in g.tensors.values():
        if len(t.shape) >= 2:
            name = t.tensor_type.name
            sizes[name] = sizes.get(name, 0) + int(np.prod(t.shape))
    return max(sizes, key=sizes.get) if sizes else "unknown"


def _llamacpp_for(w: Work):
    """The llama.cpp built here (:func:`.llamacpp.find`: an export never builds nor downloads it) when its
    figure can stand beside the program's; otherwise None, and the export's log says why, once (not an
    error): llama.cpp not built, a model that is not the GGUF's own (layers cut, fine-tuned weights laid
    over), or too few held-out ids for two chunks."""
    from .llamacpp import find

    if w.spec.layers is not None or w.spec.weights is not None:
        what = "its first layers only" if w.spec.layers is not None else "fine-tuned weights over the GGUF's"
        log.info("no llama.cpp perplexity: the model exported is %s, not the GGUF llama.cpp would read", what)
        return None
    if llamacpp_ctx(len(w.heldout), w.max_context) < 4:
        log.info("no llama.cpp perplexity: %d held-out ids make no two chunks of 4 or more", len(w.heldout))
        return None
    ref = find()
    if ref is None:
        log.info("llama.cpp is not built here, so no llama.cpp perplexity beside the program's "
                 "(build it: .venv/bin/python -m edgerun.export.llm.llamacpp)")
    return ref


def _llamacpp_perplexity(w: Work, ref, ctx: int) -> dict | None:
    """``llama-perplexity -c ctx -b ctx`` (:meth:`.llamacpp.LlamaCpp.perplexity`, as a user runs it: its
    defaults, flash attention and an F16 KV cache included) on the GGUF the export read and the held-out
    text, whose ids in llama.cpp must be the held-out ids; None (with a warning saying why) when they are
    not, or when llama.cpp fails."""
    from .llamacpp import SDIST_SHA256

    text = (DATA / "heldout.txt").read_text()
    gguf = w.gguf.path
    try:
        theirs = ref.tokenize(gguf, text, add_special=True, parse_special=False)
        if theirs != list(w.heldout):
            at = next((i for i, (a, b) in enumerate(zip(theirs, w.heldout)) if a != b),
                      min(len(theirs), len(w.heldout)))
            w.progress.warn(f"no llama.cpp perplexity: llama.cpp tokenizes the held-out text into {len(theirs)} ids, "
                            f"edgerun into {len(w.heldout)}, first apart at id {at}; the two figures would not be "
                            "of the same ids")
            return None
        with tempfile.TemporaryDirectory(prefix="edgerun-heldout-") as tmp:
            # llama-perplexity's -f drops one trailing newline: the file is the text and one more
            f = Path(tmp) / "heldout.txt"
            f.write_bytes(text.encode("utf-8") + b"\n")
            res = ref.perplexity(gguf, f, ctx=ctx)
        build = ref.build_info()
    except EdgerunError as exc:
        w.progress.warn(f"no llama.cpp perplexity: {exc.paragraph()}")
        return None
    if res["n_tokens"] != len(w.heldout):
        w.progress.warn(f"no llama.cpp perplexity: llama-perplexity read {res['n_tokens']} ids, the export "
                        f"{len(w.heldout)}")
        return None
    return {**res, "bos_id": w.tok_facts.bos_id if res["bos_replaces_first"] else None, "gguf": gguf.name,
            "gguf_type": _gguf_type(w.gguf), "llama_cpp_python": ref.version, "source_sha256": SDIST_SHA256,
            "build": build}


def calibration_windows(w: Work, n: int) -> list:
    """Up to ``n`` calibration inputs ``(tokens [1, T], input_pos [T])``: the calibration text edgerun ships
    (``data/train.txt``, not the held-out text perplexity is scored on) as the GGUF tokenizes it (BOS first
    when it adds BOS), in windows of at most the max context, each from position 0."""
    import torch

    from .tokenizer import encode

    if getattr(w, "calibration_ids", None) is None:   # read and tokenized once an export, whichever step asks first
        w.calibration_ids = encode(w.tok, w.tok_facts, (DATA / CALIBRATION_FILE).read_text(), add_special=True,
                                   parse_special=False)
    ids = w.calibration_ids
    windows = [ids[i:i + w.max_context] for i in range(0, len(ids), w.max_context)]
    return [(torch.tensor([c], dtype=torch.long), torch.arange(len(c), dtype=torch.long))
            for c in windows if len(c) >= 2][:n]


def heldout_windows(w: Work, n: int) -> list:
    """Up to ``n`` windows ``(tokens [1, T], input_pos [T])`` of the held-out ids, as :func:`perplexity` cuts them
    (``max_context`` ids each, one shared with the next): what a distill step measures its student on."""
    import torch

    from ..recipes import Samples

    window = w.max_context - 1
    chunks = [w.heldout[s:s + window + 1] for s in range(0, len(w.heldout) - 1, window)]
    return Samples([(torch.tensor([c], dtype=torch.long), torch.arange(len(c), dtype=torch.long))
                    for c in chunks if len(c) >= 2][:n], HELDOUT_TEXT)


def _step_stage(step: Recipe, last: bool = False) -> Callable[[Work], None]:
    """A recipe step. A step that is not a quantize step makes a new model (pruned, factorised): its config and
    parameter count become the model's, and after the last of them eager perplexity is measured on the held-out
    ids (the step's facts ``eager_perplexity``), from which the program's is then judged."""
    def run(w: Work) -> None:
        distill = [s for s in w.chain.steps if s.kind == "distill"]
        if distill and step.kind in ("prune", "factorize") and getattr(w, "teacher", None) is None:
            w.teacher = w.module   # a distill step's teacher; run_step gives this step its own copy
        ctx = RecipeContext(module=w.module, example=w.example, target=w.target, flavour="llm", warn=w.progress.warn,
                            calibration=lambda n: calibration_windows(w, n), heldout=lambda n: heldout_windows(w, n),
                            teacher=getattr(w, "teacher", None))
        result = RecipeChain.run_step(step, ctx)
        if distill and step is distill[-1]:
            w.teacher = None   # its weights go as soon as no later step needs them
        facts = dict(result.facts)
        w.module = result.module
        if w.module is not w.model:
            w.model = None   # the fp32 reference is measured; its weights (4 bytes a parameter) go
        if step.kind != "quantize":
            w.config = getattr(w.module, "config", w.config)
            w.params = int(sum(p.numel() for p in w.module.parameters()))
            if last:
                window = w.max_context - 1
                if hasattr(w.module, "reset_cache"):
                    w.module.reset_cache()
                w.ppl_transformed = perplexity(_logits_fn(model=w.module), w.heldout, window)
                facts["eager_perplexity"] = {"before": w.ppl_fp32, "after": w.ppl_transformed}
        w.step_facts[next(i for i, s in enumerate(w.chain.steps) if s is step)] = facts
    return run


def _export_stage(w: Work) -> None:
    import torch

    t = torch.export.Dim("T", min=1, max=w.max_context)
    n = torch.export.Dim("N", min=1, max=w.max_context)
    # the third input: the cache's valid prefix, whose length N (a dynamic dimension of its own, so no
    # value has to be read out of input_pos) bounds what attention reads (gguf_model.Attention)
    tokens, pos = w.example[:2]
    with torch.no_grad():
        w.exported = torch.export.export(w.module, (tokens, pos, cache_positions(pos)), dynamic_shapes={
            "tokens": {1: t}, "input_pos": {0: t}, CACHE_POSITIONS: {0: n}})
    weight_bytes = _weight_bytes(w.exported)
    n4 = sum(int(f.get("int4_weight_numel") or 0) for f in w.step_facts.values())
    if n4 and weight_bytes.get("int8", 0) >= n4:
        # torchao keeps int4 codes unpacked in int8 until XNNPACK packs them two a byte
        weight_bytes["int8"] -= n4
        weight_bytes["int4"] = n4 // 2
    w.weight_bytes = dict(sorted(weight_bytes.items()))


#: the partition counts of the lowering running in this context (None: not counting)
_LOWERING: "contextvars.ContextVar[dict | None]" = contextvars.ContextVar("edgerun_lowering", default=None)
_PATCH_LOCK = threading.Lock()
_patched: list = []        # (class, its own attributes before) while any lowering counts
_counting = 0              # lowerings counting now (the wrappers stay installed until the last ends)


def _install_counters() -> None:
    from executorch.exir.backend.backend_details import BackendDetails

    for cls in BackendDetails.__subclasses__():
        own = {k: cls.__dict__[k] for k in ("preprocess", "preprocess_multimethod") if k in cls.__dict__}

        def multimethod(klass, edge_programs, compile_specs, _orig=cls.preprocess_multimethod):
            state = _LOWERING.get()
            if state is not None:
                state["total"] += sum(len(v) for v in edge_programs.values())
            return _orig.__func__(klass, edge_programs, compile_specs)

        def preprocess(edge_program, compile_specs, _orig=cls.preprocess, _name=cls.__name__):
            out = _orig(edge_program, compile_specs)
            state = _LOWERING.get()
            if state is not None:
                state["done"] += 1
                report_progress(state["done"], state["total"], f"{_name} partition {state['done']}/{state['total']}")
            return out

        cls.preprocess_multimethod = classmethod(multimethod)
        cls.preprocess = staticmethod(preprocess)
        _patched.append((cls, own))


def _remove_counters() -> None:
    while _patched:
        cls, own = _patched.pop()
        for k in ("preprocess", "preprocess_multimethod"):
            if k in own:
                setattr(cls, k, own[k])
            else:
                delattr(cls, k)


@contextlib.contextmanager
def _partition_progress():
    """While lowering, report each delegate partition preprocessed (``XnnpackBackend partition 40/302``).

    ExecuTorch's ``to_backend`` looks a backend up among ``BackendDetails.__subclasses__()`` and calls its
    ``preprocess_multimethod`` with every partition, which calls ``preprocess`` once a partition: both are
    wrapped on those classes while any lowering counts (installed by the first, removed by the last, under
    a lock); they only count, into the state of the lowering running in their context, and call through."""
    global _counting
    with _PATCH_LOCK:
        if _counting == 0:
            _install_counters()
        _counting += 1
    token = _LOWERING.set({"done": 0, "total": 0})
    try:
        yield
    finally:
        _LOWERING.reset(token)
        with _PATCH_LOCK:
            _counting -= 1
            if _counting == 0:
                _remove_counters()


#: the program's external data file holds what the program shares between a delegate and its own kernels
#: (ExecuTorch writes tag ``T`` to ``T.ptd``)
DATA_TAG = "model"
DATA_FILE = f"{DATA_TAG}.ptd"
#: what an LLM program's files hold, in the recipe identity (see llm_recipe_identity)
PROGRAM_LAYOUT = 3


def tie_external_constants(exported) -> dict[str, Any] | None:
    """Put an embedding table that another constant of the program repeats byte for byte (the LM head a
    tied model shares it with, :func:`~.quantize._share_tied_table`) in the program's external data file,
    both of them: ExecuTorch's serializer keeps identical blobs once, under both names, and the runtime
    resolves the embedding's constant and XNNPACK's packed head from that one blob. The head is tagged for
    its delegate (``delegate_constant_tag``), the table for the emitter (returned: pass its placeholder
    names to ``external_constants``). None when no table has a twin (nothing changes: one ``.pte``)."""
    import torch

    sig = exported.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}

    def value(node):
        fqn = names.get(node.name) if node.op == "placeholder" else None
        if fqn is None:
            return None
        return exported.state_dict[fqn] if fqn in exported.state_dict else exported.constants.get(fqn)

    tables = {n.args[0] for n in exported.graph.nodes
              if n.op == "call_function" and "embedding_byte" in str(n.target) and n.args}
    placeholders = [n for n in exported.graph.nodes if n.op == "placeholder"]
    tagged, twins, table_bytes, repeated = [], [], 0, {}
    for table in tables:
        t = value(table)
        if t is None:
            continue
        same = [n for n in placeholders if n is not table and (v := value(n)) is not None and v.dtype == t.dtype
                and tuple(v.shape) == tuple(t.shape) and torch.equal(v, t)]
        if not same:
            continue
        table.meta.setdefault("custom", {})["edgerun_external"] = DATA_TAG
        for twin in same:
            twin.meta.setdefault("custom", {})["delegate_constant_tag"] = DATA_TAG
        tagged.append(table.name)
        twins += [n.name for n in same]
        table_bytes += t.numel() * t.element_size()
        dt = str(t.dtype).replace("torch.", "")
        repeated[dt] = repeated.get(dt, 0) + len(same) * t.numel() * t.element_size()
    if not tagged:
        return None
    return {"tables": tagged, "twins": twins, "table_bytes": table_bytes, "repeated_bytes": repeated}


def _external_tag(node) -> str | None:
    return (node.meta.get("custom") or {}).get("edgerun_external")


def _lower_stage(w: Work) -> None:
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    from ..retrace import skip_idle_retraces

    w.shared = tie_external_constants(w.exported)
    partitioners = w.target.partitioners(w.chain.quantize)   # imports the backends' classes, which are counted
    report_progress(0, 1, "decomposing to the edge dialect, partitioning")
    with _partition_progress(), skip_idle_retraces():
        edge = to_edge_transform_and_lower(w.exported, partitioner=partitioners,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                           generate_etrecord=True)
    del w.exported   # the edge program manager keeps what it needs of the graph
    report_progress(1, 1, "memory planning, emitting")
    # run_reinplace_pass: the KV cache's index_put becomes index_put_ on the cache buffer itself, so a step
    # writes its new keys/values in place instead of copying the whole cache into a new tensor and that back
    # into the buffer (two full cache copies per layer per step; the runner's kernels register index_put_).
    # external_constants: the shared table's placeholder (by the tag tie_external_constants gave it, which the
    # edge program keeps) goes to DATA_FILE, beside its twin the delegate put there
    w.program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True, run_reinplace_pass=True,
                                                           external_constants=_external_tag if w.shared else False))


def _write_stage(w: Work) -> None:
    import torch

    from ..pipeline import _save_vectors, _versions, scheme_ref
    from ..program import describe_program
    from .tokenizer import save_tokenizer

    tmp, spec, module, g = w.tmp, w.spec, w.module, w.gguf
    pte = tmp / "model.pte"
    with open(pte, "wb") as f:
        w.program.write_to_file(f)
    data = _write_data_file(w, tmp)
    for i, step in enumerate(w.chain.steps):   # what a step says of the written program (sparsify: compressed size)
        extra = step.program_facts(pte)
        if extra:
            w.step_facts[i] = {**w.step_facts.get(i, {}), **extra}
    facts = describe_program(w.program.executorch_program)
    save_compact_etrecord(w.program.get_etrecord(), tmp / "model.etrecord")
    del w.program   # the edge graphs, the etrecord's copies and the emitted buffer: not needed any more
    tok_sha = save_tokenizer(w.tok, tmp / "tokenizer.json")
    positions = [torch.arange(len(ids)) for ids in w.prompts]
    samples = [(torch.tensor([ids]), pos, cache_positions(pos)) for ids, pos in zip(w.prompts, positions)]
    module.reset_cache() if hasattr(module, "reset_cache") else None
    with torch.no_grad():
        eager_outputs = [[module(*s)] for s in samples]
    vectors = _save_vectors(tmp, samples, eager_outputs)
    np.save(tmp / HELDOUT_IDS, np.asarray(w.heldout, dtype=np.int32))
    w.heldout_sha256 = sha256_file(tmp / HELDOUT_IDS)
    cfg, params = w.config, w.params
    w.llm = LLMFacts(
        architecture=cfg.architecture, name=g.name, parameters=params, layers=cfg.n_layers, dim=cfg.dim,
        heads=cfg.n_heads, kv_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size, max_context=w.max_context,
        kv_cache_bytes_per_token=cfg.kv_cache_bytes_per_token(4),
        kv_cache_bytes=cfg.kv_cache_bytes_per_token(4) * w.max_context,
        weight_bytes_by_dtype=w.weight_bytes, context_length=cfg.context_length,
        tokenizer=dataclasses.replace(w.tok_facts, file="tokenizer.json", sha256=tok_sha),
        source={"gguf": g.path.name, "gguf_sha256": w.gguf_sha256, "gguf_bytes": g.path.stat().st_size,
                "tensor_types": g.tensor_types(), "layers_kept": spec.layers},
    )
    w.manifest = Manifest(
        status="unverified",
        model=ModelRef(name=spec.name, task="llm", source=spec.source, origin=spec.origin,
                       description=spec.description, parameters=params, fp32_weight_bytes=params * 4),
        target=TargetRef(**w.target.to_json()), scheme=scheme_ref(w.chain, w.step_facts),
        recipe_hash=w.identity.hash, recipe=w.identity, versions=_versions(),
        inputs=(TensorSpec("tokens", (1, w.max_context), "int64"), TensorSpec("input_pos", (w.max_context,), "int64"),
                TensorSpec(CACHE_POSITIONS, (w.max_context,), "int64")),
        outputs=(TensorSpec("logits", (1, w.max_context, cfg.vocab_size), "float32"),),
        files={"pte": "model.pte", "etrecord": "model.etrecord", "tokenizer": "tokenizer.json",
               **({"data": DATA_FILE} if data else {})},
        pte_bytes=pte.stat().st_size, pte_sha256=sha256_file(pte),
        data_bytes=data.stat().st_size if data else None, data_sha256=sha256_file(data) if data else None,
        etrecord_bytes=(tmp / "model.etrecord").stat().st_size, method=facts["method"],
        planned_memory_bytes=facts["planned_memory_bytes"], planned_buffers=tuple(facts["planned_buffers"]),
        operators=Operators.from_json(facts["operators"], "operators"), test_vectors=tuple(vectors),
        llm=w.llm, path=tmp,
    )


def _write_data_file(w: Work, tmp: Path) -> Path | None:
    """Write the program's external data file when the lowering made one (a shared tied table), and check
    it holds that table once: ExecuTorch keeps identical blobs once, but only when both copies reached the
    file (the head delegated to XNNPACK, the table emitted external); otherwise the program is still
    right, only larger, and the export says so."""
    files = (w.program._tensor_data or {}) if w.shared else {}   # ExecuTorch 1.5's manager: no public view
    if not files:
        return None
    if set(files) != {DATA_TAG}:
        raise ExportError(f"the lowering wrote data files {sorted(files)}, edgerun expects only {DATA_FILE}.",
                          stage="write", hint="Report this with the recipe and the GGUF.")
    w.program.write_tensor_data_to_file(tmp)
    data = tmp / DATA_FILE
    size, table = data.stat().st_size, w.shared["table_bytes"]
    if size >= 2 * table:
        w.progress.warn(f"the tied embedding and LM head did not end up as one table: {DATA_FILE} is "
                        f"{size / 2**20:.1f} MiB for a {table / 2**20:.1f} MiB table (stored twice).")
    for dt, n in w.shared["repeated_bytes"].items():   # a table and its twins are one blob: counted once
        w.weight_bytes[dt] = w.weight_bytes.get(dt, 0) - n
    q = next((i for i, st in enumerate(w.chain.steps) if st.kind == "quantize"), None)
    if q is not None:   # the quantize step shared the table: its facts say what that saved
        w.step_facts[q] = {**w.step_facts.get(q, {}), "tied_table_bytes": table, "data_file_bytes": size}
    return data


def _verify_stage(w: Work) -> None:
    import executorch.kernels.quantized  # noqa: F401  the embedding kernels, before any program loads

    from ..pipeline import verify_artifact
    from .gguf_model import greedy

    verification = verify_artifact(w.tmp, w.manifest, w.limits)
    window = w.max_context - 1
    windows = perplexity_windows(w.heldout, window)
    recipe_ppl = not (w.chain.quantize.noop and w.chain.is_plain)
    first = w.prompts[0]
    n_new = max(1, min(32, w.max_context - len(first)))
    # units of work: program (and eager recipe) windows, both sides of each prompt, both greedy runs, and the
    # program's chunks under llama.cpp's rule when llama.cpp measured the GGUF
    ref = w.llamacpp
    chunks = ref["n_chunks"] if ref else 0
    tick = _Ticker(windows * (2 if recipe_ppl else 1) + 2 * len(w.prompts) + 2 * n_new + chunks, "step")
    prog = _logits_fn(method=_runtime_method(w.manifest.pte_path, w.manifest.data_path))
    eager_recipe = _logits_fn(model=w.module)
    fp32 = w.ppl_fp32
    program = perplexity(tick.wrap(prog, "program perplexity"), w.heldout, window)
    ppl = Perplexity(text=HELDOUT_TEXT, tokens=len(w.heldout), window=window, eager_fp32=fp32, program=program,
                     program_vs_eager_fp32=program / fp32 - 1.0,
                     eager_quantized=perplexity(tick.wrap(eager_recipe, "eager recipe perplexity"), w.heldout, window)
                     if recipe_ppl else None,
                     ids_file=HELDOUT_IDS, ids_sha256=w.heldout_sha256)
    greedy_eager = greedy(None, first, n_new, step=tick.wrap(eager_recipe, "eager greedy"))
    greedy_prog = greedy(None, first, n_new, step=tick.wrap(prog, "program greedy"))
    agreement = _position_agreement(tick.wrap(eager_recipe, "eager prompts"), tick.wrap(prog, "program prompts"),
                                    w.prompts)
    llamacpp = None
    if ref:
        program_chunks, scored = perplexity_chunks(tick.wrap(prog, "program perplexity, llama.cpp's chunks"), w.heldout,
                                                   ref["ctx"], ref["bos_id"])
        if scored != ref["n_scored"]:
            raise ExportError(f"the program's perplexity under llama.cpp's rule scored {scored} ids, "
                              f"llama-perplexity {ref['n_scored']}: edgerun does not follow its rule.", stage="verify")
        llamacpp = LlamaCppPerplexity(
            ppl=ref["ppl"], ppl_stderr=ref["ppl_stderr"], program=program_chunks, eager_fp32=w.ppl_fp32_chunks,
            tokens=ref["n_tokens"], ctx=ref["ctx"], chunks=ref["n_chunks"], scored=scored,
            bos_replaces_first=ref["bos_replaces_first"], rule=LLAMACPP_RULE, gguf=ref["gguf"],
            gguf_type=ref["gguf_type"], llama_cpp_python=ref["llama_cpp_python"], source_sha256=ref["source_sha256"],
            build=ref["build"])
    quality = LLMQuality(
        logits_vs_eager=agreement, perplexity=ppl, llamacpp=llamacpp,
        greedy=GreedyCheck(prompt_tokens=len(first), eager=tuple(greedy_eager), program=tuple(greedy_prog),
                           equal_prefix=next((i for i, (a, b) in enumerate(zip(greedy_eager, greedy_prog)) if a != b),
                                             n_new)))
    failures = list(verification.failures)
    tol = w.chain.ppl_tolerance
    # a prune/factorize step's loss is its result (the facts' eager_perplexity), not the program's fault: the
    # program is judged from the eager model those steps made
    base = getattr(w, "ppl_transformed", None)
    moved = ppl.program_vs_eager_fp32 if base is None else program / base - 1.0
    if abs(moved) > tol:
        what = "eager fp32's" if base is None else f"the eager model after {'+'.join(s.spec for s in w.chain.transforms)}"
        failures.append(f"perplexity of the program {ppl.program:.3f} is {moved:+.1%} "
                        f"from {what} {ppl.eager_fp32 if base is None else base:.3f} (allowed ±{tol:.0%})")
    w.verification = dataclasses.replace(verification, passed=not failures, failures=tuple(failures))
    w.llm = dataclasses.replace(w.llm, quality=quality)


# ---------------------------------------------------------------------------------------------


def llm_recipe_identity(spec: LLMSpec, target, recipe: "str | Recipe | RecipeChain", *,
                        max_context: int | None = None, options: ExportOptions | None = None) -> RecipeIdentity:
    """The identity an LLM export writes into its manifest, computed before any work (bench keys its artifact
    cache on it and checks a finished export against it): :func:`recipe_identity` and what makes an LLM's
    program beyond its name -- the GGUF's sha256 (a user's GGUF is named by its path), the max context (the
    default rule's when None), the blocks kept and the fine-tuned weights' hash."""
    from ..recipe import recipe_identity
    from ..targets import Target, get_target

    options = options or ExportOptions()
    tgt = target if isinstance(target, Target) else get_target(target)
    base = recipe_identity(spec, tgt, recipe, seed=options.seed, vectors=options.vectors)
    max_context = spec.default_max_context() if max_context is None else max_context
    # program_layout 2: a tied int8 table shared by the embedding and the LM head, stored once in model.ptd
    # (artifacts of layout 1 stored it twice in the .pte: a cached one is not what this edgerun would make);
    # 3: a third input, cache_positions, so attention reads the cache's valid prefix only
    return dataclasses.replace(base, model={**base.model, "program_layout": PROGRAM_LAYOUT,
                                            "gguf_sha256": sha256_file(spec.gguf()),
                                            "max_context": max_context, "layers": spec.layers,
                                            "weights_sha256": spec.weights_sha256})


def export_llm(spec: LLMSpec, target: str, scheme: "str | Recipe | RecipeChain | None" = None, out_dir=None, *,
               max_context: int | None = None, example_inputs=None, name: str | None = None,
               scheme_options: dict | None = None, options: ExportOptions | None = None,
               thresholds: dict | None = None, on_stage: OnStage | None = None,
               on_stage_done: OnStageDone | None = None, on_warning: OnWarning | None = None,
               on_progress: OnProgress | None = None) -> Manifest:
    """Export an LLM spec; see the module docstring. Takes the arguments of
    :func:`edgerun.export.pipeline.export_model` (and ``max_context``, the KV cache length) and raises
    like it; ``example_inputs`` and ``name`` do not apply to an LLM and are refused."""
    from ..pipeline import default_out_dir
    from ..targets import get_target

    started = time.monotonic()
    options = options or ExportOptions()
    max_context = spec.default_max_context() if max_context is None else max_context
    progress = Progress(on_stage, on_stage_done, on_warning, on_progress)
    with progress.stage("resolve"):
        if example_inputs is not None or name is not None:
            raise UsageError(f"example_inputs and name apply to a model given as a Python object; the LLM {spec.name} "
                             "brings its own.", hint="Drop example_inputs= and name=.")
        tgt = get_target(target)
        default = "8da4w" if "8da4w" in tgt.allowed_schemes else "fp32"   # an LLM's default
        chain = RecipeChain.of(scheme, default=default).with_options(**(scheme_options or {}))
        tgt.check_recipe(chain)
        chain.check_handlers("llm")
        check_llm_options(options)
        limits = Thresholds.for_scheme(chain, **(thresholds or {}))
        identity = llm_recipe_identity(spec, tgt, chain, max_context=max_context, options=options)
        plan = _plan(chain)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec.name, tgt.name, chain.spec)
    with artifact_dir(out, options.overwrite) as tmp:
        w = Work(spec=spec, target=tgt, chain=chain, options=options, limits=limits, identity=identity, tmp=tmp,
                 progress=progress, max_context=max_context, step_facts={})
        plan.run(w, progress)
        manifest = dataclasses.replace(w.manifest, verification=w.verification, llm=w.llm,
                                       status=STATUS_OK if w.verification.passed else STATUS_FAILED,
                                       export_seconds=round(time.monotonic() - started, 3),
                                       stage_seconds=dict(progress.times), warnings=tuple(progress.warnings))
        write_manifest(tmp, manifest)
    manifest = dataclasses.replace(manifest, path=out)
    if not manifest.verification.passed:
        raise VerificationFailed(f"the LLM program disagrees with eager PyTorch: "
                                 f"{'; '.join(manifest.verification.failures)}. "
                                 f"The artifact was kept at {out} and marked failed in its manifest.",
                                 hint="Try fp32 or a smaller --group-size.")
    return manifest
