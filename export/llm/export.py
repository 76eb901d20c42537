"""Export an LLM spec: GGUF -> Llama with its KV cache as buffers -> (quantize) -> torch.export with a
dynamic prompt length -> XNNPACK -> a verified artifact with ``tokenizer.json`` and ``llm`` facts.

It reuses the pipeline's artifact handling (stages, the temporary directory published by rename,
versions, recipe identity) and its test-vector verification; what is LLM-specific lives here:
dynamic shapes, the LLM quantization recipe (:mod:`.quantize`), and the LLM checks — per-position
logits agreement on real prompts and perplexity of eager fp32 vs the program on the held-out text
edgerun ships (``data/heldout.txt``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgerun.core.artifact import (
    STATUS_FAILED, STATUS_OK, LLMFacts, Manifest, ModelRef, Operators, SchemeRef, TargetRef, TensorSpec,
    Thresholds, sha256_file, write_manifest,
)

from ..errors import ExportError, UsageError, VerificationFailed
from .zoo import DEFAULT_MAX_CONTEXT, LLMSpec

DATA = Path(__file__).resolve().parent / "data"
PROMPTS = ("The capital of France is", "Water boils at one hundred degrees", "Once upon a time, in a small village")
#: fp32 program perplexity must be within this fraction of eager's
PPL_TOLERANCE = {"fp32": 0.01, "int8-dynamic": 0.10, "8da4w": 0.25}


def _runtime_method(pte: Path):
    import executorch.kernels.quantized  # noqa: F401  registers quantized_decomposed::embedding_* kernels
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(pte)).load_method("forward")


def _logits_fn(model=None, method=None):
    import torch

    def run(tokens, pos):
        if method is not None:
            return method.execute([tokens, pos])[0]
        with torch.no_grad():
            return model(tokens, pos)
    return run


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


def _position_agreement(eager, program, prompts: Sequence[list[int]]) -> dict:
    top1, snrs = [], []
    for ids in prompts:
        import torch

        tokens, pos = torch.tensor([ids]), torch.arange(len(ids))
        a = np.asarray(eager(tokens, pos)[0], dtype=np.float64)
        b = np.asarray(program(tokens, pos)[0], dtype=np.float64)
        top1.extend((a.argmax(-1) == b.argmax(-1)).tolist())
        noise = ((a - b) ** 2).mean(-1)
        snrs.extend((10 * np.log10((a ** 2).mean(-1) / np.maximum(noise, 1e-30))).tolist())
    return {"positions": len(top1), "top1_agreement": float(np.mean(top1)), "min_snr_db": float(np.min(snrs)),
            "median_snr_db": float(np.median(snrs))}


def _weight_bytes(exported) -> dict[str, int]:
    """Bytes of the program's weights (parameters and constant buffers, not the KV cache) by dtype;
    a tensor shared by two names (a tied weight) counts once."""
    sig = exported.graph_signature
    mutable = set(sig.buffers_to_mutate.values())
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


def export_llm(spec: LLMSpec, target: str, scheme: str | None = None, out_dir=None, *, max_context: int | None = None,
               scheme_options: dict | None = None, options=None, thresholds: dict | None = None,
               on_stage=None, **_ignored: Any) -> Manifest:
    """Export an LLM spec; see the module docstring. Raises like :func:`edgerun.export.pipeline.export_model`."""
    import torch

    from ..pipeline import ExportOptions, _prepare_out_dir, _publish, _stage, _versions, default_out_dir, \
        verify_artifact
    from ..program import describe_program
    from ..recipe import recipe_identity
    from ..schemes import make_scheme
    from ..targets import get_target
    from .gguf_model import greedy
    from .quantize import quantize_llama
    from .tokenizer import save_tokenizer, tokenizer_from_gguf

    started = time.monotonic()
    options = options or ExportOptions()
    max_context = DEFAULT_MAX_CONTEXT if max_context is None else max_context
    with _stage("resolve", on_stage):
        tgt = get_target(target)
        scheme_name = scheme or ("8da4w" if "8da4w" in tgt.allowed_schemes else "fp32")  # LLM default
        tgt.check_scheme(scheme_name)
        if scheme_name not in PPL_TOLERANCE:
            raise UsageError(f"scheme {scheme_name!r} has no LLM recipe.",
                             hint=f"LLM schemes: {', '.join(PPL_TOLERANCE)}.")
        sch = make_scheme(scheme_name, **(scheme_options or {}))
        limits = Thresholds.for_scheme(sch, **(thresholds or {}))
        identity = recipe_identity(spec, tgt, sch, seed=options.seed, vectors=options.vectors)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec.name, tgt.name, sch.name)
    tmp = _prepare_out_dir(out, options.overwrite)
    try:
        with _stage("load model", on_stage):
            model, example, g = spec.build_llm(max_context)
            tok, tok_facts = tokenizer_from_gguf(g)
            gguf_sha = sha256_file(g.path)
            identity = dataclasses.replace(identity, model={**identity.model, "gguf_sha256": gguf_sha,
                                                           "max_context": max_context, "layers": spec.layers,
                                                           "weights_sha256": spec.weights_sha256})
        module, quant_facts = model, {}
        if sch.quantized:
            with _stage("quantize", on_stage):
                module, quant_facts = quantize_llama(model, sch)
        with _stage("export", on_stage):
            t = torch.export.Dim("T", min=1, max=max_context)
            with torch.no_grad():
                exported = torch.export.export(module, example, dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}})
            weight_bytes = _weight_bytes(exported.run_decompositions({}))
            n4 = int(quant_facts.get("int4_weight_numel") or 0)
            if n4 and weight_bytes.get("int8", 0) >= n4:
                # torchao keeps int4 codes unpacked in int8 until XNNPACK packs them two a byte
                weight_bytes["int8"] -= n4
                weight_bytes["int4"] = n4 // 2
                weight_bytes = dict(sorted(weight_bytes.items()))
        with _stage("lower", on_stage):
            from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(exported, partitioner=tgt.partitioners(sch),
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                               generate_etrecord=True)
            program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
        with _stage("write", on_stage):
            from ..pipeline import _save_vectors

            pte = tmp / "model.pte"
            with open(pte, "wb") as f:
                program.write_to_file(f)
            program.get_etrecord().save(str(tmp / "model.etrecord"))
            tok_sha = save_tokenizer(tok, tmp / "tokenizer.json")
            prompts = [tok.encode(p).ids[:max_context] for p in PROMPTS][:options.vectors]
            samples = [(torch.tensor([ids]), torch.arange(len(ids))) for ids in prompts]
            module.reset_cache() if hasattr(module, "reset_cache") else None
            with torch.no_grad():
                eager_outputs = [[module(*s)] for s in samples]
            vectors = _save_vectors(tmp, samples, eager_outputs)
            facts = describe_program(program.executorch_program)
            cfg = model.config
            params = int(sum(p.numel() for p in model.parameters()))
            llm = LLMFacts(
                architecture="llama", name=g.name, parameters=params, layers=cfg.n_layers, dim=cfg.dim,
                heads=cfg.n_heads, kv_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size, max_context=max_context,
                kv_cache_bytes_per_token=cfg.kv_cache_bytes_per_token(4),
                kv_cache_bytes=cfg.kv_cache_bytes_per_token(4) * max_context,
                weight_bytes_by_dtype=weight_bytes, context_length=cfg.context_length,
                tokenizer={"file": "tokenizer.json", "sha256": tok_sha, **tok_facts.to_json()},
                source={"gguf": g.path.name, "gguf_sha256": gguf_sha, "gguf_bytes": g.path.stat().st_size,
                        "tensor_types": g.tensor_types(), "layers_kept": spec.layers},
            )
            manifest = Manifest(
                status="unverified",
                model=ModelRef(name=spec.name, task="llm", source=spec.source, origin=spec.origin,
                               description=spec.description, parameters=params, fp32_weight_bytes=params * 4),
                target=TargetRef(**tgt.to_json()),
                scheme=SchemeRef(name=sch.name, options=sch.options(), recipe_hash=sch.recipe_hash, facts=quant_facts),
                recipe_hash=identity.hash, recipe=identity, versions=_versions(),
                inputs=(TensorSpec("tokens", (1, max_context), "int64"), TensorSpec("input_pos", (max_context,), "int64")),
                outputs=(TensorSpec("logits", (1, max_context, cfg.vocab_size), "float32"),),
                files={"pte": "model.pte", "etrecord": "model.etrecord", "tokenizer": "tokenizer.json"},
                pte_bytes=pte.stat().st_size, pte_sha256=sha256_file(pte),
                etrecord_bytes=(tmp / "model.etrecord").stat().st_size, method=facts["method"],
                planned_memory_bytes=facts["planned_memory_bytes"], planned_buffers=tuple(facts["planned_buffers"]),
                operators=Operators.from_json(facts["operators"], "operators"), test_vectors=tuple(vectors),
                llm=llm, path=tmp,
            )
        with _stage("verify", on_stage):
            import executorch.kernels.quantized  # noqa: F401  the embedding kernels, before any program loads

            verification = verify_artifact(tmp, manifest, limits)
            method = _runtime_method(pte)
            eager_fp32, prog = _logits_fn(model=model), _logits_fn(method=method)
            eager_q = _logits_fn(model=module)
            heldout = tok.encode((DATA / "heldout.txt").read_text()).ids
            window = max_context - 1
            ppl = {"text": "edgerun export/llm/data/heldout.txt", "tokens": len(heldout), "window": window,
                   "eager_fp32": perplexity(eager_fp32, heldout, window),
                   "program": perplexity(prog, heldout, window)}
            if sch.quantized:
                ppl["eager_quantized"] = perplexity(eager_q, heldout, window)
            ppl["program_vs_eager_fp32"] = ppl["program"] / ppl["eager_fp32"] - 1.0
            n_new = max(1, min(32, max_context - len(prompts[0])))
            greedy_eager = greedy(module, prompts[0], n_new)
            greedy_prog = greedy(None, prompts[0], n_new, step=prog)
            quality = {"logits_vs_eager": _position_agreement(eager_q, prog, prompts), "perplexity": ppl,
                       "greedy": {"prompt_tokens": len(prompts[0]), "eager": greedy_eager, "program": greedy_prog,
                                  "equal_prefix": next((i for i, (a, b) in enumerate(zip(greedy_eager, greedy_prog))
                                                        if a != b), n_new)}}
            failures = list(verification.failures)
            tol = PPL_TOLERANCE[sch.name]
            if abs(ppl["program_vs_eager_fp32"]) > tol:
                failures.append(f"perplexity of the program {ppl['program']:.3f} is {ppl['program_vs_eager_fp32']:+.1%} "
                                f"from eager fp32's {ppl['eager_fp32']:.3f} (allowed ±{tol:.0%})")
            verification = dataclasses.replace(verification, passed=not failures, failures=tuple(failures))
            llm = dataclasses.replace(llm, quality=quality)
        manifest = dataclasses.replace(manifest, verification=verification, llm=llm,
                                       status=STATUS_OK if verification.passed else STATUS_FAILED,
                                       export_seconds=round(time.monotonic() - started, 3))
        write_manifest(tmp, manifest)
        _publish(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = dataclasses.replace(manifest, path=out)
    if not verification.passed:
        raise VerificationFailed(f"the LLM program disagrees with eager PyTorch: {'; '.join(verification.failures)}. "
                                 f"The artifact was kept at {out} and marked failed in its manifest.",
                                 hint="Try fp32 or a smaller --group-size.")
    return manifest
