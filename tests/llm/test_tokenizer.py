"""The GGUF's tokenizer rebuilt with ``tokenizers``: round-trips, agrees with the GGUF's own token
list, keeps control tokens whole, and carries BOS/EOS and the chat template."""

from __future__ import annotations

import hashlib

import pytest
from tokenizers import Tokenizer

from edgerun.core.errors import ExportError
from edgerun.export.llm.gguf_model import read_gguf
from edgerun.export.llm.chat import render_chat
from edgerun.export.llm.tokenizer import build_tokenizer, save_tokenizer, tokenizer_from_gguf
from tiny import DATA, SPECIALS

HELDOUT = (DATA / "heldout.txt").read_text()


def _bytes_of(tokens_by_id, ids) -> bytes:
    """What the GGUF token list says the ids spell (GPT-2's byte<->unicode table, inverted)."""
    from tokenizers.pre_tokenizers import ByteLevel

    table = {}
    alphabet = sorted(ByteLevel.alphabet(), key=ord)
    # GPT-2's mapping: printable bytes map to themselves, the rest to 256+n in order
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    n = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    assert set(table) == set(alphabet)
    return bytes(table[ch] for i in ids for ch in tokens_by_id[i])


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    g = read_gguf(tiny_gguf)
    return g, *tokenizer_from_gguf(g)


def test_tiny_tokenizer_round_trips_and_spells_what_the_gguf_token_list_says(tiny):
    g, tok, facts = tiny
    tokens = g.field("tokenizer.ggml.tokens")
    for text in (HELDOUT, "Hello, world!  Two  spaces\tand a tab.\n", "naïve café — 42°"):
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert _bytes_of(tokens, ids).decode("utf-8") == text
    assert len(tok.encode(HELDOUT).ids) < len(HELDOUT.encode()) / 1.5  # merges were applied


def test_control_tokens_stay_whole_and_bos_eos_template_are_kept(tiny):
    g, tok, facts = tiny
    tokens = g.field("tokenizer.ggml.tokens")
    assert facts.special_tokens == tuple(SPECIALS)
    assert (facts.bos_id, facts.eos_id) == (1, 2)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == tokens.index("<|im_start|>") and ids[-1] == tokens.index("<|im_end|>")
    assert "<|im_start|>" not in tok.encode("<|im_start").tokens  # an incomplete one is just text
    prompt = render_chat(facts.chat_template, [{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_saved_tokenizer_json_loads_back_and_encodes_the_same(tiny, tmp_path):
    _, tok, _ = tiny
    sha = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert sha == hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert again.encode(HELDOUT + "<|im_end|>").ids == tok.encode(HELDOUT + "<|im_end|>").ids


def test_an_unknown_pre_tokenizer_or_bad_merge_is_refused():
    with pytest.raises(ExportError, match=r"pre-tokenizer 'no-such-pre'.*known: default, llama3, .*qwen2, .*tekken"):
        build_tokenizer(["a", "b"], [], [1, 1], pre="no-such-pre", source="x.gguf")
    with pytest.raises(ExportError, match=r"merge 0 \('ab'\) is not two tokens"):
        build_tokenizer(["a", "b"], ["ab"], [1, 1], source="x.gguf")
    with pytest.raises(ExportError, match=r"merge 0 \('a c'\) names 'c', which is not a token"):
        build_tokenizer(["a", "b", "ab"], ["a c"], [1, 1, 1], source="x.gguf")


def test_smollm2_tokenizer_matches_its_token_list(smollm2_gguf):
    g = read_gguf(smollm2_gguf)
    tok, facts = tokenizer_from_gguf(g)
    tokens = g.field("tokenizer.ggml.tokens")
    assert facts.vocab_size == 49152 and (facts.bos_id, facts.eos_id) == (1, 2)
    assert len(facts.special_tokens) == 17 and "<|im_start|>" in facts.special_tokens
    assert "<|im_start|>" in facts.chat_template
    assert [tokens[i] for i in tok.encode("What is the capital of France?").ids] == \
        ["What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?"]
    assert tok.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]  # smollm: digits one by one
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and tokens[1] == "<|im_start|>"
    assert tok.decode(tok.encode(HELDOUT).ids) == HELDOUT
    assert _bytes_of(tokens, tok.encode(HELDOUT).ids).decode() == HELDOUT
