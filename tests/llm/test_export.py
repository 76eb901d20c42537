"""`edgerun export` of an LLM: the tiny GGUF made here goes to a verified artifact with a KV cache,
a dynamic prompt length, tokenizer.json and the manifest's llm facts; fp32 reproduces eager's greedy
tokens, and 8da4w quantizes the embedding and the LM head with kernels the native runner has."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import UsageError
from edgerun.export import export_model
from edgerun.export.zoo import get_model
from edgerun.export.llm.zoo import LLMSpec


def test_a_gguf_path_and_smollm2_are_llm_specs(tiny_gguf, tmp_path):
    spec = get_model(str(tiny_gguf))
    assert isinstance(spec, LLMSpec) and spec.source == "gguf" and spec.task == "llm"
    model, (tokens, pos) = spec.build()
    assert tokens.shape[0] == 1 and tuple(pos.shape) == (tokens.shape[1],)
    assert isinstance(get_model("smollm2-135m"), LLMSpec)
    with pytest.raises(UsageError, match=r"absent\.gguf.*no such file"):
        get_model(str(tmp_path / "absent.gguf"))


def test_max_context_is_refused_for_a_model_that_is_not_an_llm(tmp_path):
    with pytest.raises(UsageError, match="--max-context applies to LLMs only"):
        export_model("digits_cnn", "host", "fp32", tmp_path / "a", max_context=64)


@pytest.mark.slow
def test_fp32_export_of_the_tiny_gguf_matches_eager(tiny_fp32):
    m = read_manifest(tiny_fp32)  # exported once per session by the fixture (max context 48)
    assert m.ok, m.verification.failures
    assert type(m.llm).from_json(m.llm.to_json(), "llm") == m.llm  # the llm facts survive a JSON round trip
    llm = m.llm
    assert (llm.architecture, llm.layers, llm.dim, llm.max_context) == ("llama", 2, 64, 48)
    assert llm.kv_cache_bytes_per_token == 2 * 2 * 2 * 16 * 4 and llm.kv_cache_bytes == 48 * 512
    # the tied embedding is counted once; the RoPE cos/sin tables ([max_context, head_dim/2] each) are constants
    assert llm.weight_bytes_by_dtype["float32"] == 4 * llm.parameters + 2 * 48 * 8 * 4
    tok = Tokenizer.from_file(str(tiny_fp32 / "tokenizer.json"))
    assert llm.tokenizer["sha256"] and tok.encode("<|im_start|>").ids == [1]
    q = llm.quality
    assert q["greedy"]["eager"] == q["greedy"]["program"] and len(q["greedy"]["eager"]) == 32
    assert q["logits_vs_eager"]["top1_agreement"] == 1.0
    assert abs(q["perplexity"]["program_vs_eager_fp32"]) < 0.01
    assert json.loads((tiny_fp32 / "manifest.json").read_text())["llm"]["max_context"] == 48


@pytest.mark.slow
def test_8da4w_export_quantizes_embedding_and_lm_head(tiny_gguf, tiny_fp32, tmp_path):
    fp32 = read_manifest(tiny_fp32)
    m = export_model(str(tiny_gguf), "rpi5", "8da4w", tmp_path / "q", max_context=48,
                     scheme_options={"group_size": 32, "embedding_bits": 4})
    assert m.ok, m.verification.failures
    ops = m.operators.non_delegated
    assert any("embedding_4bit" in k for k in ops), ops
    assert m.llm.weight_bytes_by_dtype.get("float32", 0) < fp32.llm.weight_bytes_by_dtype["float32"] / 10
    assert m.pte_bytes < 0.5 * fp32.pte_bytes
    assert m.llm.quality["logits_vs_eager"]["top1_agreement"] > 0.5


def test_8da4w_embedding_bits_picks_the_table_kernel(tiny_gguf):
    """The default --embedding-bits 8 keeps the embedding table at a byte per code (embedding_byte, one scale
    a row); 4 packs two codes a byte (embedding_4bit, a scale per group); bad values are refused."""
    import pytest as _pytest

    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, _ = load_llama(tiny_gguf, max_context=16)
    q8, facts8 = quantize_llama(model, make_scheme("8da4w"))
    q4, facts4 = quantize_llama(model, make_scheme("8da4w", embedding_bits=4))
    assert "embedding_byte" in facts8["embedding"] and q8.tok_embeddings.bits == 8
    assert q8.tok_embeddings.weight.shape == model.tok_embeddings.weight.shape
    assert "embedding_4bit" in facts4["embedding"] and q4.tok_embeddings.weight.shape[1] * 2 == model.config.dim
    with _pytest.raises(UsageError, match="embedding_bits must be 4 or 8"):
        make_scheme("8da4w", embedding_bits=6)
