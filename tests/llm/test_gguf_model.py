"""GGUF -> PyTorch Llama: the tiny GGUF written here round-trips, the KV cache makes decode equal
prefill, bad files are refused naming the file, and SmolLM2's real weights load (and answer)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgerun.core.errors import ExportError
from edgerun.export.llm.gguf_model import Llama, greedy, load_llama, read_gguf, write_gguf
from tiny import tiny_config, train_tokenizer, write_tiny_gguf


def _snr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    noise = (ref - got).pow(2).mean().item()
    return float("inf") if noise == 0 else 10 * np.log10(ref.pow(2).mean().item() / noise)


def _random_llama(tied: bool = True, seed: int = 1):
    tok = train_tokenizer()
    cfg = dataclasses.replace(tiny_config(len(tok["tokens"])), tied_embeddings=tied)
    torch.manual_seed(seed)
    model = Llama(cfg, max_context=32).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model, tok


TOKENS = torch.tensor([[3, 17, 42, 99, 7, 250, 11]])
POS = torch.arange(TOKENS.shape[1])


@pytest.mark.parametrize("tied", [True, False])
def test_an_f32_gguf_written_here_loads_back_to_the_same_logits(tmp_path, tied):
    model, tok = _random_llama(tied=tied)
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer=tok)
    loaded, g = load_llama(path, max_context=32)
    assert g.config == model.config
    assert ("output.weight" in g.tensors) is (not tied)
    assert (loaded.output.weight is loaded.tok_embeddings.weight) is tied
    with torch.no_grad():
        assert torch.equal(model(TOKENS, POS), loaded(TOKENS, POS))


@pytest.mark.parametrize("dtype,min_snr", [("F16", 60.0), ("Q8_0", 35.0), ("Q4_0", 15.0), ("Q4_1", 15.0)])
def test_quantized_ggufs_dequantize_close_to_the_original(tmp_path, dtype, min_snr):
    model, tok = _random_llama()
    loaded, g = load_llama(write_gguf(model, tmp_path / "m.gguf", tokenizer=tok, dtype=dtype), max_context=32)
    assert g.tensor_types()[dtype] == 1 + 7 * model.config.n_layers  # embedding + 7 matrices a block
    want, got = model.state_dict(), loaded.state_dict()
    for name, ref in want.items():
        if ref.dim() == 2:
            assert _snr_db(ref, got[name]) > min_snr, name
            assert not torch.equal(ref, got[name]), name  # it really was quantized
    with torch.no_grad():
        assert torch.isfinite(loaded(TOKENS, POS)).all()


def test_decoding_token_by_token_through_the_kv_cache_equals_one_prefill(tiny_gguf):
    model, _ = load_llama(tiny_gguf, max_context=16)
    with torch.no_grad():
        full = model(TOKENS, POS)
        model.reset_cache()
        steps = [model(TOKENS[:, i:i + 1], POS[i:i + 1]) for i in range(TOKENS.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    # a prompt split into two prefills continues the same way
    with torch.no_grad():
        model(TOKENS[:, :3], POS[:3])
        rest = model(TOKENS[:, 3:], POS[3:])
    torch.testing.assert_close(rest, full[:, 3:], rtol=1e-4, atol=1e-4)


def test_the_model_exports_with_a_dynamic_prompt_length(tiny_gguf):
    model, _ = load_llama(tiny_gguf, max_context=16)
    t = torch.export.Dim("T", min=1, max=16)
    with torch.no_grad():
        ep = torch.export.export(model, (TOKENS, POS), dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}})
    # functionalised (as to_edge does), the in-place index_copy_ become mutations of the cache buffers
    mutated = ep.run_decompositions({}).graph_signature.buffers_to_mutate.values()
    assert sorted(mutated) == sorted(f"layers.{i}.attention.{c}_cache" for i in range(2) for c in "kv")
    out = ep.module()(TOKENS[:, :1], POS[:1])  # T=1, not the example's 7
    assert tuple(out.shape) == (1, 1, model.config.vocab_size)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert all(o.startswith("aten.") or o.startswith("<built-in") for o in ops), ops  # no custom ops


def test_a_gguf_of_another_architecture_is_refused_naming_it(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ExportError, match=r"gpt2\.gguf is a GGUF of architecture 'gpt2'; edgerun reads the architectures llama .*qwen2.*phi3"):
        read_gguf(tmp_path / "gpt2.gguf")


def test_a_truncated_gguf_is_refused_naming_the_file(tmp_path, tiny_gguf):
    cut = tmp_path / "cut.gguf"
    data = tiny_gguf.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"cut\.gguf.*(truncated|cannot be read)"):
        load_llama(cut)


def test_a_file_that_is_not_gguf_or_is_missing_is_refused(tmp_path):
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ExportError, match=r"model\.gguf is not a GGUF file.*expected b'GGUF'"):
        read_gguf(other)
    with pytest.raises(ExportError, match=r"absent\.gguf does not exist"):
        read_gguf(tmp_path / "absent.gguf")


def test_an_unsupported_quant_type_is_refused_naming_the_tensor(tmp_path, monkeypatch):
    import gguf

    model, tok = _random_llama()
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer=tok, dtype="Q8_0")

    def refuse(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", refuse)
    with pytest.raises(ExportError, match=r"tensor token_embd\.weight is of type Q8_0.*cannot dequantize"):
        load_llama(path)


def test_smollm2_reads_as_the_documented_llama(smollm2_gguf, smollm2_2layers):
    g = read_gguf(smollm2_gguf)
    c = g.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.tied_embeddings
    assert g.tensor_types() == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    model, cut = smollm2_2layers
    assert model.config.n_layers == 2 and len(model.layers) == 2
    with torch.no_grad():
        logits = model(torch.tensor([[504, 3575, 282]]), torch.arange(3))
    assert torch.isfinite(logits).all() and logits.std() > 1.0


@pytest.mark.slow
def test_smollm2_answers_the_capital_of_france(smollm2_gguf):
    from edgerun.export.llm.chat import render_chat
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    model, g = load_llama(smollm2_gguf, max_context=64)
    tok, facts = tokenizer_from_gguf(g)
    prompt = render_chat(facts.chat_template, [{"role": "user", "content": "What is the capital of France?"}])
    out = greedy(model, tok.encode(prompt).ids, 8)
    assert tok.decode(out).startswith("The capital of France is Paris.")
