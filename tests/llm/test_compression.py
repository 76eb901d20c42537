"""The LLM handlers of the compression recipes (issue 22): ``prune-ffn``, ``prune-heads`` and ``lowrank`` on the
tiny models of every family. A pruned model is exactly the original with the removed neurons / KV groups
silenced (KV cache included: greedy decoding agrees); activation importance finds neurons that never fire
where magnitude keeps them; whitened SVD is the best fit under the inputs' scaling; the recipes' text, hash
and refusals; and (slow) exports of a tiny GGUF verify, list each step's facts and run on the host runner."""

from __future__ import annotations

import copy

import pytest
import torch

from edgerun.core.errors import UsageError
from edgerun.export import parse_recipe
from edgerun.export.compression import LowRank, PruneFFN, PruneHeads
from edgerun.export.llm.compress import RANK_MULTIPLE, lowrank_llama, prune_ffn, prune_heads
from edgerun.export.llm.gguf_model import greedy

from tiny import FAMILIES, random_family_model, tiny_tokenizer

VOCAB = len(tiny_tokenizer()["tokens"])
PROMPT = [1, 17, 42, 99, 7, 250, 3, 60]


def _samples(n: int = 4, length: int = 40, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (1, length), generator=g), torch.arange(length)) for _ in range(n)]


def _logits(model, ids=PROMPT):
    model.reset_cache()
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.arange(len(ids)))
    model.reset_cache()
    return out


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------- recipe text
def test_the_recipes_parse_in_both_forms_hash_every_option_and_come_before_quantize():
    assert parse_recipe("prune-ffn(0.25)+8da4w").spec == "prune-ffn+8da4w"     # 0.25 is the default ratio
    assert parse_recipe("prune-heads(0.5)").steps[0] == PruneHeads(ratio=0.5)
    assert parse_recipe("lowrank(0.5)").steps[0] == LowRank(ratio=0.5)           # not an integer: a ratio
    assert parse_recipe("lowrank(32)").steps[0] == LowRank(rank=32)
    assert parse_recipe("lowrank:energy=0.9").steps[0] == LowRank(energy=0.9)     # the old options still work
    texts = ["prune-ffn", "prune-ffn:ratio=0.5", "prune-ffn:importance=magnitude", "prune-heads",
             "prune-heads:importance=magnitude", "lowrank:ratio=0.5", "lowrank:ratio=0.5:whiten=true",
             "lowrank:rank=32", "prune-ffn+8da4w", "prune-ffn+prune-heads+8da4w"]
    chains = [parse_recipe(t) for t in texts]
    assert len({c.recipe_hash for c in chains}) == len(texts)
    assert [s.kind for s in chains[-1].steps] == ["prune", "prune", "quantize"]
    for text in ("8da4w+prune-ffn", "int8-dynamic+prune-heads(0.5)", "8da4w+lowrank(0.5)"):
        with pytest.raises(UsageError, match="must come last"):
            parse_recipe(text)


@pytest.mark.parametrize("text,words", [
    ("prune-ffn:ratio=1", ["ratio", "between 0 and 1"]),
    ("prune-heads:ratio=0", ["ratio", "between 0 and 1"]),
    ("prune-ffn:importance=random", ["importance must be one of activation, magnitude"]),
    ("lowrank:ratio=0.5:rank=8", ["exactly one of rank"]),
    ("lowrank:ratio=1.5", ["ratio", "between 0 and 1"]),
])
def test_bad_options_are_refused_naming_what_works(text, words):
    with pytest.raises(UsageError) as info:
        parse_recipe(text)
    assert all(w in info.value.paragraph() for w in words), info.value.paragraph()


def test_prune_ffn_and_prune_heads_are_refused_for_a_model_that_is_not_an_llm(tmp_path):
    from edgerun.export import export_model

    for text in ("prune-ffn", "prune-heads(0.5)+int8"):
        started: list[str] = []
        with pytest.raises(UsageError) as info:
            export_model("digits_cnn", "host", text, tmp_path / "x", on_stage=started.append)
        assert int(info.value.exit_code) == 2
        out = info.value.paragraph()
        assert "has no handler for a model" in out and "prune-channels" in out, out
        assert started == ["resolve"] and not (tmp_path / "x").exists()
    # and every one of them has an LLM handler (prune-channels, convolutional, does not)
    parse_recipe("prune-ffn+prune-heads+lowrank(0.5)+8da4w").check_handlers("llm")
    with pytest.raises(UsageError, match="no handler for an LLM"):
        parse_recipe("prune-channels+8da4w").check_handlers("llm")


# ------------------------------------------------------------------------------------ prune-ffn
@pytest.mark.parametrize("arch", FAMILIES)
def test_prune_ffn_is_the_model_with_those_neurons_silenced(arch):
    """Magnitude importance, recomputed here: the pruned model computes exactly what the original computes with
    the removed neurons' down columns zeroed -- prefill logits and greedy decoding through the KV cache."""
    model = random_family_model(arch, VOCAB)
    silenced = copy.deepcopy(model)
    facts = prune_ffn(model, PruneFFN(ratio=0.25, importance="magnitude"))
    ffn = silenced.config.ffn_dim
    keep = ffn - round(0.25 * ffn)
    assert model.config.ffn_dim == keep and facts["ffn_dim_after"] == keep and facts["neurons_removed_per_layer"] == 32
    for block, orig in zip(model.layers, silenced.layers):
        ff = orig.feed_forward
        score = ff.w1.weight.norm(dim=1) * ff.w3.weight.norm(dim=1) * ff.w2.weight.norm(dim=0)
        gone = torch.topk(score, ffn - keep, largest=False).indices
        with torch.no_grad():
            ff.w2.weight[:, gone] = 0
        assert block.feed_forward.w1.weight.shape == (keep, model.config.dim)
        assert block.feed_forward.w2.weight.shape == (model.config.dim, keep)
    assert torch.allclose(_logits(model), _logits(silenced), atol=1e-4)
    assert greedy(model, PROMPT, 12) == greedy(silenced, PROMPT, 12)
    assert facts["parameters_before"] == _params(silenced) and facts["parameters_after"] == _params(model)
    assert _params(silenced) - _params(model) == model.config.n_layers * 3 * model.config.dim * (ffn - keep)
    assert facts["importance"] == "magnitude" and "calibration" not in facts
    assert model.config.parameter_count() == _params(model)


def _dead_neuron_model():
    """A llama whose residual stream lives in dims 0..31 (embedding columns, attention and FFN outputs beyond them
    zero), and whose FFN neurons 0..31 read only dims 32..63 (plus a 1e-3 leak) with weights ten times larger:
    they barely fire, yet have the largest weights."""
    model = random_family_model("llama", VOCAB, seed=3)
    half = model.config.dim // 2
    dead = torch.arange(32)
    with torch.no_grad():
        model.tok_embeddings.weight[:, half:] = 0
        for block in model.layers:
            block.attention.wo.weight[half:] = 0
            ff = block.feed_forward
            ff.w2.weight[half:] = 0
            for w in (ff.w1.weight, ff.w3.weight):
                w[dead, :half] *= 1e-3
                w[dead, half:] *= 10
            ff.w2.weight[:, dead] *= 10
    return model, dead


def test_activation_importance_removes_the_neurons_that_do_not_fire_where_magnitude_keeps_them():
    model, dead = _dead_neuron_model()
    reference = _logits(model)
    samples = _samples()
    errors = {}
    for importance in ("activation", "magnitude"):
        m = copy.deepcopy(model)
        facts = prune_ffn(m, PruneFFN(ratio=0.25, importance=importance), samples)
        errors[importance] = float((_logits(m) - reference).norm() / reference.norm())
        if importance == "activation":
            assert facts["calibration"]["tokens"] == sum(s[0].numel() for s in samples)
            # the kept neurons are exactly the live ones, in every layer
            for block, orig in zip(m.layers, model.layers):
                assert torch.equal(block.feed_forward.w1.weight, orig.feed_forward.w1.weight[32:])
    g = torch.Generator().manual_seed(0)
    random_errors = []
    for _ in range(3):     # random choices of the same number of neurons, by silencing them
        m = copy.deepcopy(model)
        with torch.no_grad():
            for block in m.layers:
                block.feed_forward.w2.weight[:, torch.randperm(128, generator=g)[:32]] = 0
        random_errors.append(float((_logits(m) - reference).norm() / reference.norm()))
    assert errors["activation"] < 0.01, errors
    assert errors["magnitude"] > 20 * errors["activation"] and min(random_errors) > 20 * errors["activation"], (
        errors, random_errors)


# ---------------------------------------------------------------------------------- prune-heads
@pytest.mark.parametrize("arch,importance", [(a, "activation") for a in FAMILIES if a != "gemma"]
                         + [("qwen2", "magnitude")])
def test_prune_heads_is_the_model_with_those_kv_groups_silenced(arch, importance):
    """Removing a KV group (its KV head, its query heads, their output columns) equals zeroing those output
    columns in the original -- biases (qwen2), q/k norms (qwen3, gemma3), sliding windows and soft-caps
    (gemma2/3), phi3's fused q/k/v included; greedy decoding through the (smaller) KV cache agrees too."""
    model = random_family_model(arch, VOCAB)
    silenced = copy.deepcopy(model)
    cfg = silenced.config
    facts = prune_heads(model, PruneHeads(ratio=0.5, importance=importance), _samples())
    rep, hd = cfg.n_heads // cfg.n_kv_heads, cfg.head_dim
    assert (model.config.n_kv_heads, model.config.n_heads, model.config.head_dim) == (1, rep, hd)
    for layer, block, orig in zip(facts["layers"], model.layers, silenced.layers):
        (kept,) = layer["kv_groups_kept"]
        gone = [g for g in range(cfg.n_kv_heads) if g != kept]
        with torch.no_grad():
            for g in gone:
                orig.attention.wo.weight[:, g * rep * hd:(g + 1) * rep * hd] = 0
        assert block.attention.k_cache.shape == (1, 1, hd, model.max_context)   # keys stored transposed
        assert block.attention.v_cache.shape == (1, 1, model.max_context, hd)
        assert torch.equal(block.attention.wk.weight, orig.attention.wk.weight[kept * hd:(kept + 1) * hd])
    assert torch.allclose(_logits(model), _logits(silenced), atol=1e-4)
    assert greedy(model, PROMPT, 12) == greedy(silenced, PROMPT, 12)
    assert facts["kv_cache_bytes_per_token_after"] * 2 == facts["kv_cache_bytes_per_token_before"]
    assert facts["parameters_after"] == _params(model) == model.config.parameter_count()


def test_prune_heads_refuses_a_ratio_that_leaves_a_fractional_group_or_none():
    llama = random_family_model("llama", VOCAB)     # 2 KV groups of 2 query heads
    for ratio, words in ((0.25, "is 0.5 groups"), (0.1, "is 0.2 groups"), (0.99, "would remove every one")):
        with pytest.raises(UsageError) as info:
            prune_heads(copy.deepcopy(llama), PruneHeads(ratio=ratio, importance="magnitude"))
        assert words in info.value.paragraph() and "0.5" in info.value.paragraph(), info.value.paragraph()
    with pytest.raises(UsageError, match="multi-query attention"):
        prune_heads(random_family_model("gemma", VOCAB), PruneHeads(ratio=0.5, importance="magnitude"))
    with pytest.raises(UsageError, match="removes none .whole groups of 32 go"):     # 12.8 of 128 neurons
        prune_ffn(copy.deepcopy(llama), PruneFFN(ratio=0.1, importance="magnitude"))


# -------------------------------------------------------------------------------------- lowrank
def test_lowrank_factorises_each_blocks_linears_and_leaves_embedding_and_head():
    model = random_family_model("qwen2", VOCAB)          # untied head, q/k/v biases
    original = copy.deepcopy(model)
    facts = lowrank_llama(model, LowRank(ratio=0.25))
    done = {d["layer"]: d for d in facts["factorised"]}
    # dim 64: r = 16 -> 32; a 64x64 or 32x64 attention linear would not shrink at 32, the 128x64 FFN ones do
    assert set(done) == {f"layers.{i}.feed_forward.{w}" for i in range(2) for w in ("w1", "w2", "w3")}
    assert all(d["rank"] % RANK_MULTIPLE == 0 for d in done.values())
    assert {d["layer"].rsplit(".", 1)[1] for d in facts["skipped"]} == {"wq", "wk", "wv", "wo"}
    assert torch.equal(model.output.weight, original.output.weight) and type(model.output) is torch.nn.Linear
    assert facts["parameters_after"] == _params(model) < facts["parameters_before"]
    first, second = model.layers[0].feed_forward.w1
    w = original.layers[0].feed_forward.w1.weight.double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    assert torch.allclose((second.weight @ first.weight).double(), (u[:, :32] * s[:32]) @ vh[:32], atol=1e-5)
    model.reset_cache()
    assert _logits(model).shape == _logits(original).shape


def test_pruned_and_factorised_models_take_8da4w():
    """The shapes the recipes leave are ones 8da4w's int4 groups (32 along the input) can take: factorised ranks are
    multiples of 32; pruned FFN and attention widths only reach layers it keeps int8 per-channel (down, wo)."""
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model = random_family_model("llama", VOCAB)
    prune_heads(model, PruneHeads(ratio=0.5, importance="magnitude"))
    pf = prune_ffn(model, PruneFFN(ratio=0.3, importance="magnitude"))      # 38.4 of 128 -> 32: whole groups of 32
    assert (model.config.ffn_dim, pf["share_removed"]) == (96, 0.25)
    facts = lowrank_llama(model, LowRank(ratio=0.2))
    assert facts["layers_factorised"] >= 2
    q, qf = quantize_llama(model, make_scheme("8da4w", group_size=32))
    assert qf["int4_linear_layers"] >= 2
    assert torch.allclose(_logits(q), _logits(model), atol=0.5 * float(_logits(model).abs().max()))


def test_whitened_lowrank_fits_the_layers_outputs_better_where_input_scales_differ():
    """ASVD-style: with input channels whose scales differ a hundredfold, the whitened factorisation's error on
    the layer's real inputs is smaller than plain SVD's at the same rank, and its factors are the truncated SVD
    of W diag(s) with diag(1/s) folded back."""
    model = random_family_model("llama", VOCAB)
    with torch.no_grad():
        for block in model.layers:
            block.ffn_norm.weight.copy_(torch.logspace(-1, 1, model.config.dim))
    samples = _samples()
    inputs = []
    hook = model.layers[0].feed_forward.w1.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, 64)))
    for s in samples:
        model(*s)
    hook.remove()
    model.reset_cache()
    x = torch.cat(inputs).double()
    w = model.layers[0].feed_forward.w1.weight.double()
    errors = {}
    for whiten in (False, True):
        m = copy.deepcopy(model)
        facts = lowrank_llama(m, LowRank(rank=32, whiten=whiten), samples)
        first, second = m.layers[0].feed_forward.w1
        approx = (second.weight @ first.weight).double()
        errors[whiten] = float(((approx - w) @ x.T).norm() / (w @ x.T).norm())
        if whiten:
            assert facts["calibration"]["windows"] == len(samples)
            rms = (x.pow(2).mean(0)).sqrt()
            u, sv, vh = torch.linalg.svd(w * rms[None, :], full_matrices=False)
            assert torch.allclose(approx, ((u[:, :32] * sv[:32]) @ vh[:32]) / rms[None, :], atol=1e-4)
    assert errors[True] < 0.7 * errors[False], errors


def test_lowrank_ratio_on_a_model_and_whiten_refused_there(tmp_path):
    """For a model (not an LLM) ratio works as rank = ratio x min(in, out); whiten needs the LLM's calibration
    text, and is refused by name."""
    from torch import nn

    from edgerun.export import export_model
    from edgerun.export.compression import lowrank_linears

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    facts = lowrank_linears(net, LowRank(ratio=0.25))
    assert [(d["layer"], d["rank"]) for d in facts["factorised"]] == [("0", 12), ("2", 1)]   # 0.25 x 48, x 4
    with pytest.raises(UsageError, match="whiten=true is built for LLMs"):
        export_model(nn.Sequential(nn.Linear(64, 64)).eval(), "host", "lowrank:ratio=0.5:whiten=true",
                     tmp_path / "x", example_inputs=torch.randn(1, 64))
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------------------- exports
@pytest.mark.slow
def test_prune_ffn_then_8da4w_exports_a_verified_tiny_llm(tiny_gguf, make_artifact):
    from edgerun.core.artifact import read_manifest

    m = read_manifest(make_artifact(str(tiny_gguf), "rpi5", "prune-ffn:ratio=0.25+8da4w", max_context=48))
    assert m.ok, m.verification.failures
    assert m.scheme.recipe == "prune-ffn+8da4w" and [s.name for s in m.scheme.steps] == ["prune-ffn", "8da4w"]
    prune, quant = m.scheme.steps
    assert dict(prune.options) == {"ratio": 0.25, "importance": "activation"}
    f = prune.facts
    assert (f["ffn_dim_before"], f["ffn_dim_after"]) == (128, 96) and f["calibration"]["tokens"] > 100
    assert m.model.parameters == m.llm.parameters == f["parameters_after"] < f["parameters_before"]
    assert f["eager_perplexity"]["before"] == m.llm.quality["perplexity"]["eager_fp32"]
    assert quant.facts["int4_linear_layers"] > 0


@pytest.mark.slow
def test_a_pruned_and_factorised_tiny_llm_generates_eagers_greedy_tokens_on_the_host_runner(tiny_gguf, make_artifact):
    from edgerun.core.artifact import read_manifest
    from edgerun.export.llm.export import PROMPTS
    from edgerun.llm import GenerateSettings, generate

    recipe = "prune-heads:ratio=0.5+prune-ffn:importance=magnitude+lowrank:ratio=0.25:whiten=true"
    art = make_artifact(str(tiny_gguf), "rpi5", recipe, max_context=48)
    m = read_manifest(art)
    assert m.ok, m.verification.failures
    assert [s.name for s in m.scheme.steps] == ["prune-heads", "prune-ffn", "lowrank"]
    heads, ffn, low = (s.facts for s in m.scheme.steps)
    assert heads["kv_heads_after"] == m.llm.kv_heads == 1 and m.llm.heads == 2
    assert m.llm.kv_cache_bytes_per_token == heads["kv_cache_bytes_per_token_after"] == 2 * 2 * 1 * 16 * 4
    assert ffn["importance"] == "magnitude" and ffn["ffn_dim_after"] == 96
    assert low["whiten"] and low["layers_factorised"] >= 1 and low["calibration"]["tokens"] > 100
    assert m.model.parameters == low["parameters_after"] < heads["parameters_before"]
    q = m.llm.quality
    assert q["greedy"]["eager"] == q["greedy"]["program"] and len(q["greedy"]["eager"]) == 32
    assert low["eager_perplexity"]["after"] == pytest.approx(q["perplexity"]["program"], rel=0.01)
    record, _ = generate(art, "local://", PROMPTS[0], GenerateSettings(max_new_tokens=32, ignore_stop=True, threads=1))
    assert list(record.llm.ids) == q["greedy"]["eager"]
