"""Every LLM family edgerun reads (llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3): a tiny random GGUF of
each, written with the keys and tensor names llama.cpp reads, loads into the one model definition, decodes
through its KV cache as one prefill does, exports with core ATen ops only, round-trips, and -- the point --
gives llama.cpp's own greedy tokens and logits on the same file; a model with one family switch wrong does
not. Bad files (unknown architecture, missing or misshapen or foreign tensors, edited metadata) are refused
with an ExportError naming the file, the key or tensor and what was expected, before any large allocation."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgerun.core.errors import ExportError
from edgerun.export.llm import families as fam_mod
from edgerun.export.llm.gguf_model import Llama, greedy, load_llama, read_gguf, write_gguf
from edgerun.export.llm.llamacpp import logits_agreement
from tiny import FAMILIES, family_config, random_family_model, tiny_tokenizer, write_family_gguf

#: longer than the 6-token window of gemma2/gemma3's sliding layer, so the window is exercised
PROMPT = [3, 17, 42, 99, 7, 250, 11, 5, 64, 128, 200, 31]


@pytest.fixture(scope="session")
def family_gguf(tmp_path_factory):
    """``family_gguf(arch) -> Path``: the tiny GGUF of ``arch``, written once per session."""
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = write_family_gguf(root / f"{arch}.gguf", arch)
        return cache[arch]
    return get


def _logits(model, ids) -> np.ndarray:
    model.reset_cache()
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.arange(len(ids)))[0].double().numpy()
    model.reset_cache()
    return out


def _min_snr(ref: np.ndarray, got: np.ndarray) -> float:
    """The worst position's SNR of ``got`` against ``ref`` ([T, vocab] logits), in dB."""
    return logits_agreement(ref, got)["snr_db_min"]


# --------------------------------------------------------------------------------- every family
@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_reads_back_as_written(family_gguf, tmp_path, arch):
    path = family_gguf(arch)
    model, g = load_llama(path, max_context=32)
    assert g.config == family_config(arch, len(tiny_tokenizer()["tokens"])) and g.family.arch == arch
    # the count the file-size bound uses is the model's (a tied head once)
    assert g.config.parameter_count() == sum(p.numel() for p in model.parameters())
    names = set(g.tensors)
    if arch == "phi3":   # fused as llama.cpp's converter writes Phi-3, split at load into the common parts
        assert "blk.0.attn_qkv.weight" in names and "blk.0.attn_q.weight" not in names
        assert "blk.0.ffn_gate.weight" not in names
        assert {"attention.wq.weight", "attention.wk.weight", "feed_forward.w1.weight"} <= {
            n.split(".", 2)[2] for n in dict(model.named_parameters()) if n.startswith("layers.0.")}
    # written back and read again: the same tensors, bit for bit
    again, g2 = load_llama(write_gguf(model, tmp_path / "again.gguf", tokenizer=tiny_tokenizer()), max_context=32)
    assert g2.config == g.config and set(g2.tensors) == names
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phi3_fused_tensors_are_split_in_llama_cpp_order(family_gguf):
    from edgerun.export.llm.gguf_model import dequantized

    model, g = load_llama(family_gguf("phi3"), max_context=16)
    cfg = g.config
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    qkv = torch.from_numpy(dequantized(g, "blk.1.attn_qkv.weight"))
    up = torch.from_numpy(dequantized(g, "blk.1.ffn_up.weight"))
    att, ffn = model.layers[1].attention, model.layers[1].feed_forward
    assert torch.equal(att.wq.weight, qkv[:q]) and torch.equal(att.wk.weight, qkv[q:q + kv])
    assert torch.equal(att.wv.weight, qkv[q + kv:])
    # ggml_swiglu: silu of the first half (the gate) times the second (up)
    assert torch.equal(ffn.w1.weight, up[:cfg.ffn_dim]) and torch.equal(ffn.w3.weight, up[cfg.ffn_dim:])


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_decodes_through_its_cache_as_one_prefill_and_exports(family_gguf, arch):
    model, g = load_llama(family_gguf(arch), max_context=16)
    ids = PROMPT[:10]
    tokens, pos = torch.tensor([ids]), torch.arange(len(ids))
    with torch.no_grad():
        full = model(tokens, pos)
        model.reset_cache()
        steps = torch.cat([model(tokens[:, i:i + 1], pos[i:i + 1]) for i in range(len(ids))], dim=1)
        train = model.forward_train(tokens)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(train, full, rtol=1e-4, atol=1e-4)
    out = greedy(model, ids[:4], 6)
    assert len(out) == 6 and all(0 <= t < g.config.vocab_size for t in out)
    t = torch.export.Dim("T", min=1, max=16)
    model.reset_cache()
    with torch.no_grad():
        ep = torch.export.export(model, (tokens, pos), dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}})
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert all(o.startswith("aten.") or o.startswith("<built-in") for o in ops), ops  # no custom ops
    model.reset_cache()
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(tokens, pos), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "phi3"])
def test_the_llm_quantizer_takes_a_family_with_biases_a_scaled_tied_embedding_or_split_tensors(family_gguf, arch):
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, g = load_llama(family_gguf(arch), max_context=16)
    q, facts = quantize_llama(model, make_scheme("8da4w", group_size=32))
    # every block's gate and up (phi3's from its fused ffn_up) are int4; the rest int8, the head included
    assert facts["int4_linear_layers"] == 2 * g.config.n_layers
    assert facts["linear_layers"] == 7 * g.config.n_layers + 1
    tokens = torch.tensor([PROMPT[:8]])
    with torch.no_grad():
        out = q(tokens, torch.arange(8))
    assert out.shape == (1, 8, g.config.vocab_size) and torch.isfinite(out).all()
    if g.config.final_softcap:  # the soft-cap still bounds the quantized logits
        assert out.abs().max() <= g.config.final_softcap


def _window_cases(family_gguf, tmp_path):
    yield "gemma2", family_gguf("gemma2"), (True, False)
    # Mistral-style: llama.attention.sliding_window on a llama GGUF slides every layer (an edgerun reading:
    # llama.cpp ignores the key for llama, so the two agree only on sequences shorter than the window)
    cfg = dataclasses.replace(family_config("llama", len(tiny_tokenizer()["tokens"])), sliding_window=6)
    torch.manual_seed(3)
    model = Llama(cfg, max_context=16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    yield "llama", write_gguf(model, tmp_path / "mistral-like.gguf", tokenizer=tiny_tokenizer()), ()


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "phi3"])
def test_lora_on_wq_wv_trains_and_merges_for_a_family(family_gguf, arch):
    """LoRA fine-tuning targets attention.wq/wv: they exist in every family (phi3's split from attn_qkv, qwen2's
    with biases), gradients reach the adapters through forward_train, and merging keeps the logits."""
    from edgerun.export.finetune import add_lora, merge_lora

    model, _ = load_llama(family_gguf(arch), max_context=16)
    lora, chosen = add_lora(model, rank=4, targets=("attention.wq", "attention.wv"))
    assert sorted(chosen) == sorted(f"layers.{i}.attention.{w}" for i in range(2) for w in ("wq", "wv"))
    tokens = torch.tensor([PROMPT[:8]])
    lora.train()
    loss = torch.nn.functional.cross_entropy(lora.forward_train(tokens)[0, :-1], tokens[0, 1:])
    loss.backward()
    trained = [n for n, p in lora.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained and all("lora_" in n for n in trained)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_b" in n:
                p.normal_(0.0, 0.05)
        want = lora.eval().forward_train(tokens)
        got = merge_lora(lora).forward_train(tokens)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_sliding_layer_sees_only_its_window(family_gguf, tmp_path):
    """gemma2's layer 0 (and every layer of a llama GGUF that gives a window) slides over 6 positions:
    switching the window off changes the logits from position 6 on, and nothing before it."""
    for arch, path, flags in _window_cases(family_gguf, tmp_path):
        model, g = load_llama(path, max_context=16)
        assert (g.config.architecture, g.config.sliding_window, g.config.sliding_layers) == (arch, 6, flags)
        wide = Llama(dataclasses.replace(g.config, sliding_window=0, sliding_layers=()), max_context=16)
        wide.load_state_dict(model.state_dict())
        a, b = _logits(model, PROMPT), _logits(wide.eval(), PROMPT)
        assert np.array_equal(a[:6], b[:6]), arch
        assert np.abs(a[6:] - b[6:]).max(-1).min() > 1e-3, arch


# ------------------------------------------------------------------------------ against llama.cpp
#: each family with one of its switches wrong (what a wrong norm, a missing +1, a wrong RoPE layout does)
MUTANTS = {
    "llama": ("NeoX instead of interleaved RoPE", {"family": {"rope": fam_mod.ROPE_NEOX}}),
    "qwen2": ("q/k/v biases dropped", {"state": lambda s: {k: (v * 0 if k.endswith(".bias") else v)
                                                           for k, v in s.items()}}),
    "qwen3": ("no q/k RMSNorm", {"family": {"qk_norm": False}}),
    "gemma": ("norm weights taken as 1 + w (the converter already added the 1)",
              {"state": lambda s: {k: (v + 1 if k.endswith("norm.weight") else v) for k, v in s.items()}}),
    "gemma2": ("no soft-capping", {"config": {"attn_softcap": 0.0, "final_softcap": 0.0}}),
    "gemma3": ("the global RoPE base on the sliding layer", {"config": {"rope_theta_local": 0.0}}),
    "phi3": ("gate and up halves of ffn_up swapped",
             {"state": lambda s: {(k.replace("w1", "w3") if ".w1." in k else k.replace("w3", "w1")
                                   if ".w3." in k else k): v for k, v in s.items()}}),
}
#: Bounds of the per-position SNR of edgerun's logits against llama.cpp's (its reference tool: fp32 KV cache,
#: no flash attention; the weights here are F32). Where the FFN is SiLU everything is fp32 summed in another
#: order: about 2^-24 relative, measured 115-127 dB; 90 dB leaves room and still catches a wrong epsilon or
#: scale. llama.cpp's GELU reads a table of fp16 values (GGML_GELU_FP16): up to 2^-11 relative per
#: activation (~66 dB), measured 64-76 dB on the Gemma families; 50 dB for them. Every mutant above lands
#: far below either bound (the test asserts at least 10 dB below, and prints each).
MIN_SNR_DB = {"silu": 90.0, "gelu_tanh": 50.0}
MIN_COSINE = 0.99999


def _mutant(model, spec: dict, monkeypatch):
    cfg = dataclasses.replace(model.config, **spec.get("config", {}))
    if "family" in spec:
        monkeypatch.setitem(fam_mod.FAMILIES, cfg.architecture,
                            dataclasses.replace(cfg.family, **spec["family"]))
    m = Llama(cfg, max_context=model.max_context)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state = spec.get("state", lambda s: s)(state)
    m.load_state_dict(state, strict=False)
    return m.eval()


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_matches_llama_cpp_on_the_same_gguf(family_gguf, llamacpp, arch, monkeypatch):
    path = family_gguf(arch)
    model, g = load_llama(path, max_context=32)
    ref = llamacpp.logits(path, PROMPT).astype(np.float64)
    ours = _logits(model, PROMPT)
    agree = logits_agreement(ref, ours)
    print(f"{arch}: logits vs llama.cpp: min SNR {agree['snr_db_min']:.1f} dB, min cosine {agree['cosine_min']:.8f}")
    bound = MIN_SNR_DB[g.family.activation]
    assert agree["snr_db_min"] > bound and agree["cosine_min"] > MIN_COSINE and agree["top1"] == 1.0, agree
    # greedy through the KV cache, past the sliding window
    prompt = PROMPT[:5]
    assert greedy(model, prompt, 12) == llamacpp.greedy(path, prompt, 12)
    # and the comparison can fail: one family switch wrong is far outside the bound
    what, spec = MUTANTS[arch]
    bad = _min_snr(ref, _logits(_mutant(model, spec, monkeypatch), PROMPT))
    print(f"{arch} with {what}: min SNR {bad:.1f} dB")
    assert bad < bound - 10, what


@pytest.mark.parametrize("arch,layers", [("gemma2", 46), ("gemma3", 62)])
def test_gemmas_27b_query_scale_rule_matches_llama_cpp(llamacpp, tmp_path, arch, layers):
    """llama.cpp scales a Gemma 2/3 of the 27B's depth by (dim / heads) ** -0.5, not head size ** -0.5: a model
    of that depth (d=64, head size 32 != 64 / 4) must agree with it, and would not without the rule."""
    tok = tiny_tokenizer()
    base = family_config(arch, len(tok["tokens"]))
    period = fam_mod.FAMILIES[arch].default_pattern
    cfg = dataclasses.replace(base, n_layers=layers, key_length=32, sliding_layers=fam_mod.swa_flags(layers, period))
    torch.manual_seed(0)
    model = Llama(cfg, max_context=16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.05 if name == "tok_embeddings.weight" else 0.2)
    path = write_gguf(model, tmp_path / f"{arch}-deep.gguf", tokenizer=tok)
    loaded, g = load_llama(path, max_context=16)
    assert g.config.query_scale == (cfg.dim // cfg.n_heads) ** -0.5 != cfg.head_dim ** -0.5
    ids = PROMPT[:10]
    ref = llamacpp.logits(path, ids).astype(np.float64)
    plain = Llama(dataclasses.replace(g.config, attention_scale=0.0), max_context=16)
    plain.load_state_dict(loaded.state_dict())
    snr, without = _min_snr(ref, _logits(loaded, ids)), _min_snr(ref, _logits(plain.eval(), ids))
    print(f"{arch} x{layers}: min SNR {snr:.1f} dB; with head size ** -0.5: {without:.1f} dB")
    # GELU's fp16-table error adds up layer by layer: the 2-layer bound less 10 log10(layers / 2) dB
    bound = MIN_SNR_DB["gelu_tanh"] - 10 * np.log10(layers / 2)
    assert snr > bound and without < bound - 10


@pytest.mark.parametrize("arch", ["phi3", "gemma3"])
def test_rope_over_part_of_each_head_matches_llama_cpp(llamacpp, tmp_path, arch):
    """rope.dimension_count 8 of a head's 16 (phi3) or 32 (gemma3): the first 8 dims rotate NeoX-style, the
    rest pass through, as ggml_rope_ext does."""
    tok = tiny_tokenizer()
    whole = random_family_model(arch, len(tok["tokens"]))
    model = Llama(dataclasses.replace(whole.config, rope_dim=8), max_context=64)
    model.load_state_dict(whole.state_dict())
    path = write_gguf(model, tmp_path / f"{arch}-rope8.gguf", tokenizer=tok)
    loaded, g = load_llama(path, max_context=16)
    assert g.config.rot == 8 < g.config.head_dim
    ref = llamacpp.logits(path, PROMPT).astype(np.float64)
    full = Llama(dataclasses.replace(g.config, rope_dim=0), max_context=16)
    full.load_state_dict(loaded.state_dict())
    snr, rotated_whole = _min_snr(ref, _logits(loaded, PROMPT)), _min_snr(ref, _logits(full.eval(), PROMPT))
    bound = MIN_SNR_DB[g.family.activation]
    assert snr > bound and rotated_whole < bound - 10


def test_a_quantized_fused_gguf_matches_llama_cpp_within_its_8bit_activations(llamacpp, tmp_path, monkeypatch):
    """phi3 in Q8_0: the fused attn_qkv / ffn_up are dequantized, then split. llama.cpp multiplies Q8_0 weights
    with activations it quantizes to Q8_0 too (ggml's vec_dot_type), about 2^-8 relative per matmul, so the
    bound is 20 dB (measured: 29 dB min over positions); the same file with gate and up swapped is ~0 dB."""
    path = write_family_gguf(tmp_path / "phi3-q8.gguf", "phi3", dtype="Q8_0")
    model, g = load_llama(path, max_context=16)
    assert g.tensor_types()["Q8_0"] == 2 + 4 * g.config.n_layers   # embedding, head; qkv, output, up, down a block
    ref = llamacpp.logits(path, PROMPT).astype(np.float64)
    assert _min_snr(ref, _logits(model, PROMPT)) > 20.0
    assert _min_snr(ref, _logits(_mutant(model, MUTANTS["phi3"][1], monkeypatch), PROMPT)) < 10.0


def test_partial_rope_is_refused_where_llama_cpp_rotates_whole_heads(tmp_path):
    tok = tiny_tokenizer()
    whole = random_family_model("qwen2", len(tok["tokens"]))
    model = Llama(dataclasses.replace(whole.config, rope_dim=8), max_context=64)
    path = write_gguf(model, tmp_path / "qwen2-rope8.gguf", tokenizer=tok)
    with pytest.raises(ExportError, match=r"qwen2\.rope\.dimension_count = 8, but a qwen2 model rotates whole heads "
                                          r"of 16 dims"):
        read_gguf(path)


# ------------------------------------------------------------------------------------- refusals
def _write_with(monkeypatch, path: Path, arch: str, *, drop=(), change=None, add=None) -> Path:
    """The tiny ``arch`` GGUF with tensors dropped, changed (name -> fn(arr)) or added after another
    (after -> (new name, fn(arr of after) -> new arr))."""
    import gguf

    original = gguf.GGUFWriter.add_tensor

    def add_tensor(self, name, tensor, *args, **kwargs):
        if name in drop:
            return None
        if change and name in change:
            tensor = np.ascontiguousarray(change[name](tensor))
        original(self, name, tensor, *args, **kwargs)
        if add and name in add:
            extra, make = add[name]
            original(self, extra, np.ascontiguousarray(make(tensor)), *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(gguf.GGUFWriter, "add_tensor", add_tensor)
        write_family_gguf(path, arch)
    return path


def _edit(src: Path, dst: Path, key: str, value: int) -> Path:
    """A copy of ``src`` with one integer metadata value overwritten in place (as a hex editor would)."""
    import gguf

    dst.write_bytes(src.read_bytes())
    reader = gguf.GGUFReader(str(dst), "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    del reader
    return dst


def test_an_unknown_architecture_is_refused_naming_what_is_supported(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ExportError, match=r"falcon\.gguf is a GGUF of architecture 'falcon'; edgerun reads the "
                                          r"architectures llama \(.*\), qwen2 .*gemma3 .*phi3"):
        read_gguf(tmp_path / "falcon.gguf")


def test_a_missing_tensor_is_refused_naming_it_and_its_shape(tmp_path, monkeypatch):
    path = _write_with(monkeypatch, tmp_path / "q3.gguf", "qwen3", drop={"blk.1.attn_k_norm.weight"})
    with pytest.raises(ExportError, match=r"q3\.gguf: 1 tensor\(s\) a 2-layer qwen3 model needs are missing, first "
                                          r"blk\.1\.attn_k_norm\.weight \(expected shape \[32\]: head size\)"):
        read_gguf(path)


def test_a_tensor_of_the_wrong_shape_is_refused_with_the_shape_expected(tmp_path, monkeypatch):
    path = _write_with(monkeypatch, tmp_path / "g2.gguf", "gemma2",
                       change={"blk.0.ffn_down.weight": lambda a: a[:, :96]})
    with pytest.raises(ExportError, match=r"g2\.gguf: tensor blk\.0\.ffn_down\.weight has shape \[64, 96\]; the "
                                          r"metadata implies \[64, 128\] \(embedding_length x feed_forward_length\)"):
        read_gguf(path)


def test_a_tensor_the_family_does_not_have_is_refused(tmp_path, monkeypatch, family_gguf):
    # a Gemma's LM head is its embedding: llama.cpp reads no output.weight (and refuses a file with one)
    path = _write_with(monkeypatch, tmp_path / "gemma.gguf", "gemma",
                       add={"token_embd.weight": ("output.weight", lambda a: a)})
    with pytest.raises(ExportError, match=r"gemma\.gguf: a gemma model's LM head is token_embd\.weight, but this file "
                                          r"also has output\.weight"):
        read_gguf(path)
    # a llama block with a q-norm is not a llama
    path = _write_with(monkeypatch, tmp_path / "llama.gguf", "llama",
                       add={"blk.0.attn_norm.weight": ("blk.0.attn_q_norm.weight",
                                                       lambda a: np.ones(16, dtype=np.float32))})
    with pytest.raises(ExportError, match=r"tensor blk\.0\.attn_q_norm\.weight is not part of a llama model as "
                                          r"llama\.cpp reads it"):
        read_gguf(path)
    # a long-context Phi-3's LongRoPE factors: named as what edgerun does not apply
    path = _write_with(monkeypatch, tmp_path / "phi3.gguf", "phi3",
                       add={"token_embd.weight": ("rope_factors_long.weight", lambda a: np.ones(8, dtype=np.float32))})
    with pytest.raises(ExportError, match=r"tensor rope_factors_long\.weight holds LongRoPE factors .*Phi-3.*plain "
                                          r"and linearly scaled RoPE only"):
        read_gguf(path)


#: edited metadata -> the words of its refusal (each would have made the model ask for gigabytes)
EDITS = {
    "llama.embedding_length": (65536, r"llama\.embedding_length = 65536, but tensor token_embd\.weight is \[384, 64\]"),
    "llama.rope.dimension_count": (4096, r"llama\.rope\.dimension_count = 4096; expected an even number of at most "
                                          r"the head size 16"),
    "llama.vocab_size": (2 ** 31 - 1, r"llama\.vocab_size = 2147483647 is outside 1\.\.4194304"),
    "llama.feed_forward_length": (1 << 20, r"tensor blk\.0\.ffn_gate\.weight has shape \[128, 64\]; the metadata "
                                          r"implies \[1048576, 64\]"),
    "llama.block_count": (4000, r"llama\.block_count = 4000 is outside 1\.\.1024"),
    "llama.attention.head_count_kv": (3, r"llama\.attention\.head_count = 4 is not a multiple of "
                                         r"llama\.attention\.head_count_kv = 3"),
}


def test_edited_metadata_is_refused_before_any_large_allocation(tmp_path, tiny_gguf):
    """Each edited file is loaded (and one good file asked for an absurd context) in a child whose address
    space is capped at 1.5 GiB above what torch already takes: a refusal that came after allocating the
    model these values describe (gigabytes) would be a MemoryError there, not an ExportError."""
    cases = {key: (str(_edit(tiny_gguf, tmp_path / f"{key}.gguf", key, value)), words)
             for key, (value, words) in EDITS.items()}
    script = textwrap.dedent("""
        import json, resource, sys
        import torch
        from edgerun.core.errors import ExportError
        from edgerun.export.llm.gguf_model import load_llama
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), vm + (3 << 29)))
        out = {}
        for key, (path, max_context) in json.loads(sys.argv[1]).items():
            try:
                load_llama(path, max_context=max_context)
                out[key] = ["loaded", ""]
            except BaseException as exc:
                out[key] = [type(exc).__name__, str(exc)]
        print(json.dumps(out))
    """)
    arg = {k: (p, 32) for k, (p, _) in cases.items()}
    arg["max_context"] = (str(tiny_gguf), 1 << 30)
    res = subprocess.run([sys.executable, "-c", script, json.dumps(arg)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for key, (path, words) in cases.items():
        kind, message = got[key]
        assert kind == "ExportError", (key, kind, message)
        assert Path(path).name in message and re.search(words, message), (key, message)
    kind, message = got["max_context"]
    assert kind == "ExportError" and "max context 1073741824 is outside 2..256" in message, message


def test_a_model_larger_than_its_file_could_hold_is_refused(tiny_gguf):
    """The file-size bound (a guard behind the shape checks: tensors that share one data offset could pass
    those): parameters in fp32 at most 32 / (fewest bits per weight of any GGML type) times the file."""
    from edgerun.export.llm.gguf_model import _check_size

    cfg = read_gguf(tiny_gguf).config
    _check_size(tiny_gguf, cfg)
    with pytest.raises(ExportError, match=r"tiny\.gguf: the metadata describes [\d,]+ parameters \([\d.]+ GiB in "
                                          r"fp32\), more than a [\d,]+-byte file can hold"):
        _check_size(tiny_gguf, dataclasses.replace(cfg, n_layers=400))


def test_the_cli_maps_a_refused_gguf_to_the_export_exit_code(tmp_path, tiny_gguf, cli):
    bad = _edit(tiny_gguf, tmp_path / "bad.gguf", "llama.embedding_length", 65536)
    res = cli("export", str(bad), "--target", "rpi5", "-o", str(tmp_path / "out"), "--json")
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "ExportError" and "llama.embedding_length = 65536" in err["message"]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- export + the native runner
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gemma2", "phi3"])
def test_a_family_exports_and_generates_on_the_host_runner(family_gguf, make_artifact, arch):
    from edgerun.core.artifact import read_manifest
    from edgerun.export.llm.export import PROMPTS
    from edgerun.llm import GenerateSettings, generate

    art = make_artifact(str(family_gguf(arch)), "rpi5", "fp32", max_context=48)
    m = read_manifest(art)
    assert m.ok, m.verification.failures
    assert m.llm.architecture == arch
    q = m.llm.quality
    assert q["greedy"]["eager"] == q["greedy"]["program"] and q["logits_vs_eager"]["top1_agreement"] == 1.0
    record, _ = generate(art, "local://", PROMPTS[0], GenerateSettings(max_new_tokens=32, ignore_stop=True, threads=1))
    assert list(record.llm.ids) == q["greedy"]["eager"]


@pytest.mark.slow
@pytest.mark.qemu
def test_gemma2_under_qemu_cortex_a76_generates_the_host_tokens(family_gguf, make_artifact, runner_bundle, need):
    """A non-Llama family on Arm code: Gemma 2 (GeGLU, soft-capping, sliding and global layers, post-norms)
    generates on the aarch64 runner under qemu-aarch64 -cpu cortex-a76 the tokens the host runner does."""
    from edgerun.export.llm.export import PROMPTS
    from edgerun.llm import GenerateSettings, generate

    need("qemu-aarch64", "qemu-user")
    runner_bundle("aarch64")
    art = make_artifact(str(family_gguf("gemma2")), "rpi5", "fp32", max_context=48)
    settings = GenerateSettings(max_new_tokens=24, ignore_stop=True, threads=1)
    host, _ = generate(art, "local://", PROMPTS[1], settings)
    arm, _ = generate(art, "qemu-aarch64://?cpu=cortex-a76", PROMPTS[1], settings)
    assert arm.source == "emulated" and arm.device.arch == "aarch64" and host.device.arch != "aarch64"
    assert len(host.llm.ids) == 24 and list(arm.llm.ids) == list(host.llm.ids)
