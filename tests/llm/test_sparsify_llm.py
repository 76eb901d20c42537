"""``sparsify(ratio)`` on an LLM: the eager Llama's linear layers get their smallest-magnitude weights zeroed (its LM
head, tied to the token embeddings, left dense), on the step's own copy; the model still decodes with its KV
cache as it does recomputing the whole prefix. The export itself (tiny GGUF, sparsify(0.5)+8da4w: verified,
compressed program size in the facts) was measured by hand, not here: an LLM export costs minutes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgerun.export import RecipeChain, RecipeContext, get_target, parse_recipe
from edgerun.export.sparsity import Sparsify

from tiny import random_family_model, tiny_tokenizer

VOCAB = len(tiny_tokenizer()["tokens"])
PROMPT = [1, 17, 42, 99, 7, 250, 3, 60]


def _full_prefix_greedy(model, prompt, n):
    out = list(prompt)
    for _ in range(n):
        model.reset_cache()
        with torch.no_grad():
            logits = model(torch.tensor([out]), torch.arange(len(out)))
        out.append(int(logits[0, -1].argmax()))
    model.reset_cache()
    return out[len(prompt):]


def test_sparsify_zeroes_the_llm_linears_but_the_head_and_keeps_decoding():
    from edgerun.export.llm.gguf_model import greedy

    parse_recipe("sparsify(0.5)+8da4w").check_handlers("llm")          # an LLM handler exists
    model = random_family_model("llama", VOCAB)
    original = copy.deepcopy(model)
    ctx = RecipeContext(module=model, example=(torch.tensor([PROMPT]), torch.arange(len(PROMPT))),
                        target=get_target("host"), flavour="llm")
    result = RecipeChain.run_step(Sparsify(0.5), ctx)
    sparse = result.module
    assert sparse is not model and all(torch.equal(a, b) for a, b in zip(model.parameters(), original.parameters()))
    linears = {n: m for n, m in sparse.named_modules() if type(m) is nn.Linear}
    for name, m in linears.items():
        zeros = int((m.weight == 0).sum())
        if name == "output":
            assert torch.equal(m.weight, original.output.weight) and zeros == 0
        else:
            assert zeros == round(m.weight.numel() * 0.5), name
    f = result.facts
    assert f["layers_sparsified"] == len(linears) - 1 and [d["layer"] for d in f["skipped"]] == ["output"]
    assert torch.equal(sparse.tok_embeddings.weight, original.tok_embeddings.weight)
    sparse.reset_cache()
    cached = greedy(sparse, PROMPT, 8)
    assert cached == _full_prefix_greedy(sparse, PROMPT, 8)
