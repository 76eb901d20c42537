"""The built-in compression recipes (issue 22): ``lowrank`` (factorize) and ``prune-channels`` (prune). Each
shrinks the parameters by what its facts say, composes before a quantize step, exports a program verified
against the *compressed* model run eagerly, has every option in the recipe hash, refuses bad options by
name, and is a sweep axis whose option values are cells of their own."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgerun.core.errors import UsageError
from edgerun.export import RECIPES, export_model, parse_recipe, read_manifest
from edgerun.export.compression import LowRank, PruneChannels, lowrank_linears, prune_conv_channels


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------- lowrank
def test_lowrank_is_the_truncated_svd_and_shrinks_by_what_it_says():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    original = copy.deepcopy(model)
    facts = lowrank_linears(model, LowRank(rank=6))
    # 64x48 at rank 6 shrinks (6*112 < 3072); 48x4 at rank 6 does not (6*52 >= 192)
    assert facts["layers_factorised"] == 1 and facts["layers_skipped"] == 1
    assert [d["layer"] for d in facts["factorised"]] == ["0"] and facts["skipped"][0]["layer"] == "2"
    assert "would not shrink" in facts["skipped"][0]["reason"]
    assert facts["parameters_before"] == _params(original) and facts["parameters_after"] == _params(model)
    assert _params(original) - _params(model) == 64 * 48 - 6 * (64 + 48)
    first, second = model[0]
    assert (first.in_features, first.out_features, first.bias) == (64, 6, None)
    assert (second.in_features, second.out_features) == (6, 48) and torch.equal(second.bias, original[0].bias)
    w = original[0].weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = (u[:, :6] * s[:6]) @ vh[:6]                      # Eckart-Young: the best rank-6 approximation
    assert torch.allclose((second.weight @ first.weight).double(), best, atol=1e-5)
    assert model[2] is not original[2] and torch.equal(model[2].weight, original[2].weight)   # the skipped one kept


def test_lowrank_energy_picks_the_smallest_rank_keeping_that_share():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(128, 96))
    s = torch.linalg.svdvals(model[0].weight.detach().double())
    share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    facts = lowrank_linears(model, LowRank(energy=0.5))
    r = facts["factorised"][0]["rank"]
    assert share[r - 1] >= 0.5 > share[r - 2] and facts["factorised"][0]["energy_kept"] == pytest.approx(
        float(share[r - 1]), abs=1e-6)
    assert model[0][0].out_features == r


def test_lowrank_leaves_attention_projections_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)
            self.b.weight = self.a.weight
            self.attn = nn.MultiheadAttention(64, 4)

    model = Tied()
    facts = lowrank_linears(model, LowRank(rank=4))
    reasons = {d["layer"]: d["reason"] for d in facts["skipped"]}
    assert facts["layers_factorised"] == 0 and "tied" in reasons["a"] and "tied" in reasons["b"]
    assert "attention output projection" in reasons["attn.out_proj"]
    assert facts["parameters_after"] == facts["parameters_before"]


# ------------------------------------------------------------------------------ prune-channels
class Net(nn.Module):
    """conv -> bn -> relu -> conv (prunable); a residual add; a depthwise conv in a MobileNet block; a conv into
    the classifier's pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)     # feeds a residual add
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.expand, self.dw, self.bdw = nn.Conv2d(16, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32)
        self.project = nn.Conv2d(32, 24, 1)                                          # into the pooling
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(x))
        x = torch.relu(self.c3(y) + y)
        x = nn.functional.relu6(self.bdw(self.dw(torch.relu(self.expand(x)))))
        return self.fc(self.project(x).mean((2, 3)))


def _settled(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return model.eval()


def test_prune_channels_follows_only_the_chains_it_can_slice_safely():
    torch.manual_seed(2)
    model = _settled(Net())
    original = copy.deepcopy(model)
    facts = prune_conv_channels(model, PruneChannels(ratio=0.25))
    pruned = {d["layer"]: d for d in facts["pruned"]}
    skipped = {d["layer"]: d["reason"] for d in facts["skipped"]}
    assert set(pruned) == {"c1", "expand"}
    assert pruned["c1"]["sliced_with"] == ["b1"] and pruned["c1"]["next"] == "c2"
    assert pruned["expand"]["sliced_with"] == ["dw", "bdw"] and pruned["expand"]["next"] == "project"
    assert "add" in skipped["c2"] or "2 times" in skipped["c2"]
    assert "add" in skipped["c3"] and "groups=32" in skipped["dw"] and "mean" in skipped["project"]
    assert (model.c1.out_channels, model.b1.num_features, model.c2.in_channels) == (12, 12, 12)
    assert (model.expand.out_channels, model.dw.groups, model.bdw.running_var.numel(), model.project.in_channels) == (
        24, 24, 24, 24)
    assert facts["parameters_before"] == _params(original) and facts["parameters_after"] == _params(model)
    removed = (4 * (3 * 9 + 1) + 4 * 2 + 16 * 4 * 9) + (8 * (16 + 1) + 8 * (9 + 1) + 8 * 2 + 24 * 8)
    assert _params(original) - _params(model) == removed
    # the kept filters are the largest by L1 norm, in their order
    l1 = original.c1.weight.abs().sum((1, 2, 3))
    kept = torch.sort(torch.topk(l1, 12).indices).values
    assert torch.equal(model.c1.weight, original.c1.weight[kept]) and torch.equal(model.b1.running_mean,
                                                                                  original.b1.running_mean[kept])
    assert torch.equal(model.c2.weight, original.c2.weight[:, kept])
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_a_pruned_channel_is_what_the_model_would_compute_without_it():
    """conv -> relu -> conv: slicing is consistent when the pruned model equals the original with the removed
    filters zeroed (a zero filter, zero bias, relu(0) = 0 contributes nothing to the next conv)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.Conv2d(10, 6, 3, padding=1)).eval()
    zeroed = copy.deepcopy(model)
    facts = prune_conv_channels(model, PruneChannels(ratio=0.3))
    assert facts["layers_pruned"] == 1 and model[0].out_channels == 7
    l1 = zeroed[0].weight.abs().sum((1, 2, 3))
    gone = torch.topk(l1, 3, largest=False).indices
    with torch.no_grad():
        zeroed[0].weight[gone] = 0
        zeroed[0].bias[gone] = 0
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), zeroed(x), atol=1e-5)


class Head(nn.Module):
    def __init__(self, flatten):
        super().__init__()
        self.conv, self.pool, self.flatten = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), flatten
        self.drop, self.fc = nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(self.drop(self.flatten(x) if self.flatten is not None else torch.flatten(x, 1)))


@pytest.mark.parametrize("flatten", [nn.Flatten(), None])
def test_a_conv_into_a_classifier_is_pruned_with_the_linear_columns_of_its_channels(flatten):
    torch.manual_seed(5)
    model, x = Head(flatten).eval(), torch.randn(2, 3, 8, 8)
    zeroed = copy.deepcopy(model)
    without_shapes = prune_conv_channels(copy.deepcopy(model), PruneChannels(ratio=0.25))
    assert without_shapes["layers_pruned"] == 0 and "flatten" in without_shapes["skipped"][0]["reason"]
    facts = prune_conv_channels(model, PruneChannels(ratio=0.25), (x[:1],))
    assert facts["pruned"][0]["next"] == "fc" and (model.conv.out_channels, model.fc.in_features) == (6, 6 * 16)
    gone = torch.topk(zeroed.conv.weight.abs().sum((1, 2, 3)), 2, largest=False).indices
    with torch.no_grad():
        zeroed.conv.weight[gone] = 0
        zeroed.conv.bias[gone] = 0
    assert torch.allclose(model(x), zeroed(x), atol=1e-5)
    assert _params(zeroed) - _params(model) == 2 * (3 * 9 + 1) + 5 * 2 * 16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "mobilenet_v2"])
def test_prune_channels_on_the_zoo_cnns(name):
    from edgerun.export.zoo import get_model

    model, example = get_model(name).build()
    expected = model(*example).shape
    facts = prune_conv_channels(model, PruneChannels(ratio=0.5), example)
    assert facts["layers_pruned"] >= 1 and facts["parameters_after"] == _params(model) < facts["parameters_before"]
    assert model(*example).shape == expected
    # MobileNetV2's expand convs are pruned through their depthwise conv; its residual adds are left alone
    through = [d for d in facts["pruned"] if any(".conv.1." in s for s in d["sliced_with"])]
    assert bool(through) == (name == "mobilenet_v2")
    assert any("add" in d["reason"] for d in facts["skipped"]) == (name == "mobilenet_v2")


# --------------------------------------------------------------------------------- recipe text
def test_the_recipes_are_registered_by_kind_and_compose_before_a_quantize_step():
    assert RECIPES["lowrank"].kind == "factorize" and RECIPES["prune-channels"].kind == "prune"
    chain = parse_recipe("prune-channels:ratio=0.25+int8")
    assert [s.kind for s in chain.steps] == ["prune", "quantize"] and chain.spec == "prune-channels+int8"  # default
    assert parse_recipe("lowrank:rank=32+8da4w").spec == "lowrank:rank=32+8da4w"
    assert parse_recipe("prune-channels:ratio=0.5+lowrank:energy=0.9+int8").stages()[1][0] == "factorize"
    with pytest.raises(UsageError, match="must come last"):
        parse_recipe("int8+prune-channels")


def test_every_option_changes_the_recipe_hash():
    texts = ["lowrank:rank=8", "lowrank:rank=16", "lowrank:energy=0.9", "lowrank:energy=0.95",
             "lowrank:rank=8+8da4w", "lowrank:rank=8+8da4w:group_size=64", "prune-channels:ratio=0.25",
             "prune-channels:ratio=0.5", "prune-channels:ratio=0.25+int8", "prune-channels:ratio=0.25+int8-dynamic"]
    chains = [parse_recipe(t) for t in texts]
    assert len({c.recipe_hash for c in chains}) == len(texts) and len({c.spec for c in chains}) == len(texts)


@pytest.mark.parametrize("text,words", [
    ("lowrank", ["lowrank", "exactly one of rank", "energy", "lowrank:rank=32"]),
    ("lowrank:rank=8:energy=0.9", ["exactly one of rank"]),
    ("lowrank:rank=0", ["rank must be a positive integer"]),
    ("lowrank:rank=abc", ["option rank", "is an integer"]),
    ("lowrank:energy=1.5", ["energy must be a number between 0 and 1"]),
    ("prune-channels:ratio=1", ["ratio", "between 0 and 1", "ratio=0.25"]),
    ("prune-channels:ratio=-0.1", ["ratio"]),
    ("prune-channels:importance=activation", ["importance must be one of magnitude", "'activation'"]),
    ("prune-channels:amount=0.3", ["takes no option amount", "importance, ratio"]),
])
def test_bad_options_are_a_usage_error_naming_the_option_and_what_works(text, words):
    with pytest.raises(UsageError) as info:
        parse_recipe(text)
    out = info.value.paragraph()
    assert all(w in out for w in words), out


def test_an_llm_is_refused_prune_channels_naming_the_recipes_that_work():
    parse_recipe("lowrank:rank=8+8da4w").check_handlers("llm")     # lowrank has an LLM handler (tests/llm)
    with pytest.raises(UsageError) as info:
        parse_recipe("prune-channels+8da4w").check_handlers("llm")
    out = info.value.paragraph()
    assert "has no handler for an LLM" in out and "prune-channels" in out and "8da4w" in out and "prune-ffn" in out


def test_two_option_values_are_two_bench_cells_and_two_artifacts(edgerun_home):
    from edgerun.profiling import artifact_cache_dir, bench_cells

    recipes = [parse_recipe(t).spec for t in ("lowrank:rank=8+int8", "lowrank:rank=16+int8")]
    cells = bench_cells("factories:tiny", ["host"], recipes, ["local://"], [1])
    assert [c.key for c in cells] == [f"factories:tiny/host/{r}/local:///t1" for r in recipes]
    dirs = {artifact_cache_dir("digits_cnn", "host", r) for r in recipes}
    assert len(dirs) == 2


# ------------------------------------------------------------------------------------- exports
@pytest.mark.slow
def test_prune_channels_then_int8_exports_a_verified_digits_program(tmp_path, cli):
    m = export_model("digits_cnn", "host", "prune-channels:ratio=0.5+int8", tmp_path / "p")
    assert m.ok and m.scheme.name == "int8" and m.scheme.recipe == "prune-channels:ratio=0.5+int8"
    prune = read_manifest(tmp_path / "p").scheme.steps[0]
    assert (prune.name, prune.kind, dict(prune.options)) == ("prune-channels", "prune",
                                                              {"ratio": 0.5, "importance": "magnitude"})
    f = prune.facts
    # conv 1 into conv 2, and conv 2 through its pooling and the flatten into the classifier's first Linear
    assert [(d["layer"], d["channels_after"], d["next"]) for d in f["pruned"]] == [
        ("features.0", 8, "features.2"), ("features.2", 16, "classifier.1")]
    assert m.model.parameters == f["parameters_after"] < f["parameters_before"]
    assert "speed is not claimed" in f["speed"]
    acc = f["eager_accuracy"]
    # the program is judged against the pruned model: its eager accuracy is the one the pruned model has
    assert m.verification.task_accuracy.eager_fp32 == pytest.approx(acc["after"])
    assert 0.0 < acc["after"] <= 1.0 and 0.0 < acc["before"] <= 1.0
    out = cli("inspect", str(tmp_path / "p"), env={"COLUMNS": "200"}).stdout
    shown = " ".join(out.replace("│", " ").split())   # a table cell's text, wherever it wraps
    assert f"parameters {f['parameters_before']:,} -> {f['parameters_after']:,}" in shown
    assert "speed is not claimed" in shown and "eager fp32 after prune-channels" in shown


@pytest.mark.slow
def test_lowrank_exports_verify_against_the_factorised_model(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    # fp32 asks 40 dB of the program: only the factorised model, not the original, is that close to it
    a = export_model("factories:tiny", "host", "lowrank:rank=4", tmp_path / "a")
    assert a.ok and a.verification.thresholds.min_snr_db == 40.0
    fa = a.scheme.steps[0].facts
    assert fa["layers_factorised"] == 2 and a.model.parameters == fa["parameters_after"] < fa["parameters_before"]
    b = export_model("factories:tiny", "host", "lowrank:rank=16+8da4w", tmp_path / "b")
    fb = b.scheme.steps[0].facts
    assert b.ok and [d["layer"] for d in fb["factorised"]] == ["fc1"] and fb["skipped"][0]["layer"] == "fc2"
    assert b.scheme.steps[1].facts["quantized_linear_layers"] >= 1
    assert a.recipe_hash != b.recipe_hash


class ReadsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return self.fc(x) + x @ self.fc.weight.T   # the weight read directly: a factorised layer has none


def test_a_model_that_reads_a_factorised_weight_directly_is_an_error_naming_the_step(tmp_path):
    from edgerun.export import ExportError

    with pytest.raises(ExportError) as info:
        export_model(ReadsWeight().eval(), "host", "lowrank:rank=4", tmp_path / "x", example_inputs=torch.randn(1, 64))
    assert info.value.stage == "factorize" and "lowrank:rank=4" in info.value.paragraph()
    assert "reads a changed layer's weight" in info.value.paragraph() and not (tmp_path / "x").exists()
