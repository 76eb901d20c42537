"""llama.cpp (the real one, built by scripts/setup) as the independent reference of edgerun's LLM path.

On the same GGUF, llama.cpp and edgerun's eager model generate the same greedy tokens and agree on the
logits; llama.cpp's tokenizer and edgerun's (``tokenizer_from_gguf``) cut a mixed text into the same ids;
``llama-perplexity`` scores exactly the tokens :meth:`LlamaCpp.perplexity` documents.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from edgerun.core.errors import ExportError, UsageError
from edgerun.export.llm import llamacpp as lc
from tiny import DATA

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = DATA / "heldout.txt"
#: accents, emoji (4-byte UTF-8), code, digit runs, whitespace runs (spaces, tabs, newlines), a control token
MIXED = ("Naïve café — déjà vu: 🚀🙂 ok!\n"
         "def f(x):\n\treturn x**2  # 12345 + 0.5\n\n\n"
         "    indented   three   spaces\t\ttabs 2026-12-06 3.14159\n"
         "<|im_start|>user\nHello <|im_end|> wörld 100%")


@pytest.fixture(scope="module")
def tiny_eager(tiny_gguf):
    from edgerun.export.llm.gguf_model import load_llama

    model, g = load_llama(tiny_gguf, max_context=64)
    return model, g


def _eager_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), torch.arange(len(ids), dtype=torch.long))
    return out[0].float().numpy()


def _prompt(g, text: str) -> list[int]:
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    tok, _ = tokenizer_from_gguf(g)
    return tok.encode(text).ids


def test_setup_builds_the_pinned_version():
    m = re.search(r"^LLAMACPP_VERSION=(\S+)", (ROOT / "scripts" / "setup").read_text(), re.M)
    assert m and m.group(1) == lc.LLAMA_CPP_PYTHON


def test_a_build_is_found_only_while_its_version_flags_and_reference_source_are_current(tmp_path, monkeypatch):
    """find() never builds: it trusts a build whose stamp equals what would be built now."""
    import json
    import shutil

    monkeypatch.setenv("EDGERUN_HOME", str(tmp_path / "home"))
    build = tmp_path / "home" / "cache" / f"llamacpp-{lc.LLAMA_CPP_PYTHON}" / "build"
    (build / "bin").mkdir(parents=True)
    for tool in (lc.REF_TOOL, *lc.TOOLS):
        (build / "bin" / tool).write_bytes(b"")
    (build / "edgerun-stamp.json").write_text(json.dumps(lc._stamp()))
    assert lc.find() is not None and lc.find().paths[lc.REF_TOOL] == build / "bin" / lc.REF_TOOL
    changed = tmp_path / "native"
    shutil.copytree(lc.NATIVE, changed)
    (changed / "llamacpp_ref.cpp").write_text((changed / "llamacpp_ref.cpp").read_text() + "// changed\n")
    with monkeypatch.context() as m:
        m.setattr(lc, "NATIVE", changed)
        assert lc.find() is None  # the reference tool changed: build() must rebuild it
    with monkeypatch.context() as m:
        m.setattr(lc, "CMAKE_FLAGS", (*lc.CMAKE_FLAGS, "-DGGML_AVX512=OFF"))
        assert lc.find() is None
    assert lc.find() is not None
    (build / "bin" / "llama-quantize").unlink()
    assert lc.find() is None


def test_greedy_tokens_equal_edgerun_eager(llamacpp, tiny_gguf, tiny_eager):
    from edgerun.export.llm.gguf_model import greedy

    model, g = tiny_eager
    for text in ("The model runs on the device", "<|im_start|>user\nhello<|im_end|>\n"):
        prompt = _prompt(g, text)
        ours = greedy(model, prompt, 24)
        ref = llamacpp.greedy(tiny_gguf, prompt, 24)
        assert ref == ours, f"prompt {text!r}: llama.cpp {ref} vs edgerun eager {ours}"


def test_logits_agree_with_edgerun_eager_at_every_position(llamacpp, tiny_gguf, tiny_eager):
    """The tiny GGUF is F32 and llamacpp-ref keeps an F32 KV cache without flash attention, so the two
    differ only in float32 rounding and summation order. Measured here: 1 - cosine = 2.5e-12 and
    SNR >= 113 dB on every row. The bounds (cosine > 1 - 1e-6, SNR > 80 dB)
    leave room for another CPU's kernels; a wrong tensor mapping, RoPE layout or norm lands far below
    them (0-20 dB). (A quantized GGUF cannot be held to this: llama.cpp quantizes the activations of a
    quantized matmul, e.g. to Q8_0/Q8_1; measured on the tiny GGUF as Q8_0, worst-row SNR 21 dB.)"""
    model, g = tiny_eager
    ids = _prompt(g, HELDOUT.read_text()[:400])[:48]
    ref = llamacpp.logits(tiny_gguf, ids)
    ours = _eager_logits(model, ids)
    assert ref.shape == ours.shape == (len(ids), g.config.vocab_size)
    agree = lc.logits_agreement(ref, ours)
    assert agree["cosine_min"] > 1 - 1e-6 and agree["snr_db_min"] > 80, agree
    assert agree["top1"] == 1.0


def test_real_weights_agree_on_a_float32_gguf(llamacpp, smollm2_gguf, smollm2_2layers, tmp_path):
    """SmolLM2's real weights (2 layers, dequantized by edgerun, written back as an F32 GGUF: rope_theta
    1e5, 9 heads / 3 KV heads, a 49152 vocabulary): same logits (measured SNR 125 dB) and greedy tokens.
    On the Q4_1 GGUF itself the two differ by llama.cpp's quantized arithmetic, not by edgerun."""
    from edgerun.export.llm.gguf_model import greedy, write_gguf
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    model, g = smollm2_2layers
    tok, facts = tokenizer_from_gguf(g)
    vocab = {"tokens": g.field("tokenizer.ggml.tokens"), "merges": g.field("tokenizer.ggml.merges"),
             "token_types": g.field("tokenizer.ggml.token_type"), "bos": facts.bos_id, "eos": facts.eos_id}
    f32 = write_gguf(model, tmp_path / "smollm2-2l-f32.gguf", tokenizer=vocab, dtype="F32")
    ids = tok.encode("The capital of France is Paris. The capital of Germany is").ids
    agree = lc.logits_agreement(llamacpp.logits(f32, ids), _eager_logits(model, ids))
    assert agree["cosine_min"] > 1 - 1e-6 and agree["snr_db_min"] > 80, agree
    assert llamacpp.greedy(f32, ids, 12) == greedy(model, ids, 12)


def test_logits_are_one_prefill_so_each_row_ignores_later_tokens(llamacpp, tiny_gguf, tiny_eager):
    _, g = tiny_eager
    ids = _prompt(g, "The device runs the program and the runner reads it")
    whole = llamacpp.logits(tiny_gguf, ids)
    head = llamacpp.logits(tiny_gguf, ids[:5])
    np.testing.assert_allclose(whole[:5], head, rtol=0, atol=1e-4 * np.abs(head).max())
    assert not np.allclose(whole[5], whole[4])


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_tokenization_of_a_mixed_text_equals_edgerun(llamacpp, which, request):
    from edgerun.export.llm.gguf_model import read_gguf
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    gguf = request.getfixturevalue("tiny_gguf" if which == "tiny" else "smollm2_gguf")
    tok, facts = tokenizer_from_gguf(read_gguf(gguf))
    v = llamacpp.vocab(gguf)
    assert (v["n_vocab"], v["bos"], v["eos"], v["add_bos"]) == (facts.vocab_size, facts.bos_id, facts.eos_id,
                                                                 facts.add_bos)
    ours = tok.encode(MIXED).ids
    assert llamacpp.tokenize(gguf, MIXED, add_special=False, parse_special=True) == ours
    bos = [facts.bos_id] if facts.add_bos else []
    assert llamacpp.tokenize(gguf, MIXED, add_special=True, parse_special=True) == bos + ours
    # the control token is one id when parsed, and plain text (several ids) when not
    im_start = tok.token_to_id("<|im_start|>")
    assert im_start in ours
    assert im_start not in llamacpp.tokenize(gguf, MIXED, add_special=False, parse_special=False)


def test_perplexity_scores_exactly_the_documented_tokens(llamacpp, tiny_gguf, tiny_eager, tmp_path):
    """llama-perplexity's estimate, recomputed from llama.cpp's own logits by the rule the docstring of
    :meth:`LlamaCpp.perplexity` states (one trailing newline dropped, chunks of ctx, BOS replacing each
    chunk's first token, only the second half scored). The text is cut so that its trailing newline
    would complete the last chunk: counted wrongly, the chunk count is off by one."""
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    ctx = 32
    tok, facts = tokenizer_from_gguf(tiny_eager[1])
    n_bos = 1 if llamacpp.vocab(tiny_gguf)["add_bos"] else 0
    heldout = HELDOUT.read_text()
    for cut in range(len(heldout) - 1, 0, -1):
        body = heldout[:cut]
        n = len(tok.encode(body).ids) + n_bos
        if not body.endswith("\n") and n % ctx == ctx - 1 and len(tok.encode(body + "\n").ids) + n_bos == n + 1:
            break
    else:
        pytest.fail(f"no cut of {HELDOUT.name} whose trailing newline completes a {ctx}-token chunk")
    text_file = tmp_path / "text.txt"
    text_file.write_text(body + "\n")
    res = llamacpp.perplexity(tiny_gguf, text_file, ctx=ctx)
    assert math.isfinite(res["ppl"]) and res["ppl"] > 1
    tokens = llamacpp.tokenize(tiny_gguf, body, add_special=True, parse_special=False)
    assert res["n_tokens"] == len(tokens) == n
    assert res["n_chunks"] == len(tokens) // ctx  # (len(tokens) + 1) // ctx had the newline been kept
    assert res["scored_per_chunk"] == ctx - ctx // 2 - 1
    assert res["bos_replaces_first"] == bool(n_bos)
    nll = []
    for i in range(res["n_chunks"]):
        chunk = tokens[i * ctx:(i + 1) * ctx]
        if n_bos:
            chunk = [facts.bos_id, *chunk[1:]]
        logits = llamacpp.logits(tiny_gguf, chunk).astype(np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        nll += [-logp[j, chunk[j + 1]] for j in range(ctx // 2, ctx - 1)]
    assert len(nll) == res["n_scored"]
    assert math.exp(float(np.mean(nll))) == pytest.approx(res["ppl"], rel=2e-4)  # it prints 4 decimals


def test_bad_inputs_are_refused_with_the_file_and_what_was_expected(llamacpp, tiny_gguf, tmp_path):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(UsageError, match=r"x\.gguf: not a GGUF file"):
        llamacpp.tokenize(not_gguf, "hi")
    with pytest.raises(ExportError, match=r"not below the vocabulary size"):
        llamacpp.logits(tiny_gguf, [1, 10**6])
    with pytest.raises(UsageError, match=r"no token ids"):
        llamacpp.greedy(tiny_gguf, [], 3)
    with pytest.raises(UsageError, match=r"needs at\s+least"):
        llamacpp.perplexity(tiny_gguf, HELDOUT, ctx=4096)


def test_a_damaged_gguf_fails_with_llamacpps_own_words(llamacpp, tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ExportError, match=r"(?s)llama\.cpp greedy on cut\.gguf exited 1.*could not load"):
        llamacpp.greedy(cut, [1, 2, 3], 2)
