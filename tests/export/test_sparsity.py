"""``sparsify(ratio)`` zeroes the smallest-magnitude weights of each Linear/Conv layer (size only, never a speed
claim), and :mod:`edgerun.export.layer_stats` counts parameters and FLOPs per layer type the way inspect shows
them. The export of a sparsified model (verified, with its compressed size) runs in
tests/profiling/test_recipe_front.py's sweep."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgerun.core.errors import UsageError
from edgerun.export import RECIPES, parse_recipe
from edgerun.export.compression import LowRank, lowrank_linears
from edgerun.export.layer_stats import LayerStats, change_facts, measure, read_change
from edgerun.export.sparsity import Sparsify, compressed_size, sparsify_weights


def test_sparsify_zeroes_the_smallest_weights_of_each_layer_and_leaves_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.LayerNorm(10))
    original = copy.deepcopy(model)
    facts = sparsify_weights(model, Sparsify(0.3))
    for i in (0, 3):
        w, w0 = model[i].weight.detach(), original[i].weight.detach()
        k = round(w0.numel() * 0.3)
        zeroed = w == 0
        assert int(zeroed.sum()) == k
        assert w0[zeroed].abs().max() <= w0[~zeroed].abs().min()          # the smallest by magnitude
        assert torch.equal(w[~zeroed], w0[~zeroed]) and torch.equal(model[i].bias, original[i].bias)
    assert torch.equal(model[4].weight, original[4].weight)               # normalisation left alone
    assert facts["layers_sparsified"] == 2 and facts["zeros"] == sum(round(m.weight.numel() * 0.3)
                                                                      for m in (original[0], original[3]))
    assert facts["weights_compressed_after"] < facts["weights_compressed_before"]
    assert "no speed is claimed" in facts["speed"] and "XNNPACK has no sparse kernels" in facts["speed"]


def test_sparsify_text_options_and_refusals(tmp_path):
    assert RECIPES["sparsify"].kind == "prune"
    assert parse_recipe("sparsify(0.7)+8da4w").spec == "sparsify:ratio=0.7+8da4w"
    assert parse_recipe("sparsify+int8") == parse_recipe("sparsify(0.5)+int8")
    for text in ("sparsify(1)", "sparsify(0)", "sparsify(-0.2)"):
        with pytest.raises(UsageError, match="share of each layer's weights"):
            parse_recipe(text)
    parse_recipe("sparsify(0.5)+8da4w").check_handlers("llm")     # LLMs too: tests/llm/test_sparsify_llm.py
    data = tmp_path / "x.bin"
    data.write_bytes(bytes(100_000))
    size, packed = compressed_size(data)
    assert size == 100_000 and 0 < packed < 1_000
    assert Sparsify(0.5).program_facts(data) == {"program_bytes": size, "program_compressed_bytes": packed,
                                                 "compressor": "zlib level 9"}


def test_layer_stats_count_flops_per_layer_type_and_read_back():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8))
    x = (torch.randn(3, 64),)
    before = measure(model, x)
    assert before.by_type["Linear"].flops == 2 * 3 * (64 * 48 + 48 * 8)       # 2 per multiply-add
    assert before.by_type["Linear"].layers == 2 and before.parameters == sum(p.numel() for p in model.parameters())
    lowrank_linears(model, LowRank(rank=4))
    after = measure(model, x)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert len(linears) == 4 and after.by_type["Linear"].layers == 4      # each became two thin ones
    assert "Sequential" not in after.by_type                              # no weights, no FLOPs of its own
    assert after.by_type["Linear"].flops == sum(2 * 3 * m.in_features * m.out_features for m in linears) == after.flops
    assert after.flops < before.flops
    got = read_change({"layer_stats": change_facts(before, after)})
    assert got == (before, after) and read_change({"zeroed": 0}) is None
    with pytest.raises(ValueError, match="by_type.Linear.flops is not a count"):
        LayerStats.from_json({"parameters": 1, "flops": 1, "by_type": {"Linear": {"layers": 1, "parameters": 1,
                                                                                  "flops": -5}}}, "facts")
