"""Byte-level BPE (``tokenizer.ggml.model = gpt2``) GGUF tokenizers: every pre-tokenizer edgerun knows
(``tokenizer.ggml.pre``) gives llama.cpp's ids on the same GGUF; the splits that tell the families apart
(digits, case, CJK), ``ignore_merges``, llama.cpp's BOS defaults and Phi-3's stripped spaces; an unknown
pre-tokenizer is refused naming the known ones."""

from __future__ import annotations

import pytest

from edgerun.core.errors import ExportError
from edgerun.export.llm.gguf_model import read_gguf
from edgerun.export.llm.tokenizer import BPE_PRE_TOKENIZERS, build_tokenizer, encode, tokenizer_from_gguf
from tiny_tokenizers import CHAT_CONTROL, MIXED, bpe_from_tokenizers, spm_from_tokenizers, write_tokenizer_gguf

#: one name per distinct pre-tokenizer (the others share its regexes and flags)
FAMILIES = sorted({spec: name for name, spec in BPE_PRE_TOKENIZERS.items()}.values())
CHATML = "<|im_start|>user\nHi 2024!<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def bpe_spec():
    return bpe_from_tokenizers()


@pytest.fixture(scope="module")
def llamacpp_or_none():
    """llama.cpp when built (the tests that take this check their own facts without it too)."""
    from edgerun.export.llm.llamacpp import find

    return find()


def _pieces(tok, text: str) -> list[str]:
    """The words the pre-tokenizer cuts (before BPE), as text."""
    from tokenizers.decoders import ByteLevel

    return [ByteLevel().decode([w]) for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def _tok(bpe_spec, pre: str):
    return build_tokenizer(bpe_spec.tokens, bpe_spec.merges, bpe_spec.types, pre=pre)[0]


def test_every_known_pre_tokenizer_gives_llama_cpps_ids(bpe_spec, tmp_path, llamacpp):
    for pre in FAMILIES:
        path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", bpe_spec.replace(pre=pre))
        tok, facts = tokenizer_from_gguf(read_gguf(path))
        vocab = llamacpp.vocab(path)
        assert (facts.bos_id, facts.add_bos) == (vocab["bos"], vocab["add_bos"]), pre
        for text in (MIXED, CHATML + MIXED[:80]):
            for parse_special in (True, False):
                assert encode(tok, facts, text, parse_special=parse_special) == \
                    llamacpp.tokenize(path, text, parse_special=parse_special), (pre, parse_special)


@pytest.mark.parametrize("pre,want", [
    ("gpt-2", ["in", " 2024123", ",", " x"]),
    ("smollm", ["in", " ", "2", "0", "2", "4", "1", "2", "3", ",", " x"]),
    ("llama-bpe", ["in", " ", "202", "412", "3", ",", " x"]),
    ("qwen2", ["in", " ", "2", "0", "2", "4", "1", "2", "3", ",", " x"]),
    ("default", ["in", " ", "202", "412", "3", ",", " x"]),        # runs of digits cut in threes
    ("falcon", ["in", " ", "202", "412", "3", ",", " x"]),
])
def test_the_families_cut_digits_as_llama_cpp_does(bpe_spec, pre, want):
    assert _pieces(_tok(bpe_spec, pre), "in 2024123, x") == want


def test_tekken_and_gpt4o_cut_at_case_changes_and_deepseek_isolates_cjk(bpe_spec):
    assert _pieces(_tok(bpe_spec, "tekken"), "HelloWorld ÉLAN")[:3] == ["Hello", "World", " É"]
    assert _pieces(_tok(bpe_spec, "gpt-4o"), "HelloWorld it's")[:3] == ["Hello", "World", " it's"]
    assert _pieces(_tok(bpe_spec, "deepseek-llm"), "ab日本語cd") == ["ab", "日本語", "cd"]
    assert _pieces(_tok(bpe_spec, "llama-bpe"), "ab日本語cd") == ["ab日本語cd"]


def test_unicode_spaces_split_as_llama_cpps_x0b_stand_in():
    """llama.cpp's std::regex sees every non-ASCII whitespace character as \\x0b: a class whose range holds
    one (deepseek's CJK range holds U+2000-U+200A, U+3000) does not match it."""
    from tokenizers import Regex, pre_tokenizers

    spaces = [0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    for name, spec in BPE_PRE_TOKENIZERS.items():
        cut = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes])
        for cp in spaces:
            for shape in ("a{}b", " {}", "日{}本", "。{}、", "x{}{}y", "1{}2"):
                text = shape.format(chr(cp), chr(cp))
                assert [o for _, o in cut.pre_tokenize_str(text)] == \
                    [o for _, o in cut.pre_tokenize_str(text.replace(chr(cp), "\x0b"))], (name, hex(cp), shape)


def test_ignore_merges_takes_a_whole_word_token_as_is(tmp_path, llamacpp_or_none):
    """'abc' is a token that no merge makes: llama3's pre-tokenizer (ignore_merges) takes the word whole,
    GPT-2's joins what the merges allow."""
    tokens = ["a", "b", "c", "bc", "abc", "Ġ"]
    for pre, want in (("llama-bpe", ["abc"]), ("gpt-2", ["a", "bc"])):
        tok, _ = build_tokenizer(tokens, ["b c"], [1] * len(tokens), pre=pre)
        assert tok.encode("abc", add_special_tokens=False).tokens == want
        if llamacpp_or_none is not None:
            from tiny_tokenizers import TokenizerSpec

            spec = TokenizerSpec(model="gpt2", tokens=tokens, types=[1] * len(tokens), merges=["b c"], pre=pre,
                                 bos=0, eos=0, unk=None, add_bos=False)
            path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", spec)
            assert llamacpp_or_none.tokenize(path, "abc") == [tokens.index(t) for t in want]


def test_llama_cpps_bos_defaults_per_pre_tokenizer(bpe_spec, tmp_path):
    def facts(**changes):
        return tokenizer_from_gguf(read_gguf(write_tokenizer_gguf(tmp_path / "t.gguf", bpe_spec.replace(**changes))))[1]

    assert facts(pre="llama-bpe").add_bos and facts(pre="tekken").add_bos
    assert not facts(pre="qwen2").add_bos and not facts(pre="gpt-2").add_bos
    assert not facts(pre="llama-bpe", add_bos=False).add_bos          # the GGUF's key wins
    assert facts(pre="chatglm-bpe", bos=None).bos_id is None          # chatglm: no BOS unless named
    assert facts(pre=None).pre_tokenizer == "default"                  # no name: llama.cpp's default split
    ids = encode(*tokenizer_from_gguf(read_gguf(write_tokenizer_gguf(tmp_path / "e.gguf", bpe_spec.replace(
        pre="qwen2", add_eos=True)))), "hi")
    assert ids[-1] == bpe_spec.eos


def test_phi3_strips_spaces_after_its_special_tokens(tmp_path, llamacpp_or_none):
    base = spm_from_tokenizers()
    # llama.cpp looks <|endoftext|> up by name in a Phi-3 vocabulary (it is there in Phi-3's)
    spec = base.replace(name="Phi-3 tiny test", tokens=base.tokens + ["<|endoftext|>"], types=base.types + [3],
                        scores=base.scores + [0.0])
    path = write_tokenizer_gguf(tmp_path / "phi3.gguf", spec)
    tok, facts = tokenizer_from_gguf(read_gguf(path))
    text = f"{CHAT_CONTROL[0]}   and{CHAT_CONTROL[2]}  \n and"
    names = [spec.tokens[i] for i in encode(tok, facts, text)]
    assert names[:3] == ["<s>", CHAT_CONTROL[0], "▁and"]     # "   " after <|user|> dropped
    if llamacpp_or_none is not None:
        assert encode(tok, facts, text) == llamacpp_or_none.tokenize(path, text)
    plain = tokenizer_from_gguf(read_gguf(write_tokenizer_gguf(tmp_path / "llama.gguf", spec.replace(name="tiny"))))
    assert [spec.tokens[i] for i in encode(*plain, text)][2] != "▁and"


def test_an_unknown_pre_tokenizer_is_refused_naming_the_known_ones(bpe_spec, tmp_path):
    path = write_tokenizer_gguf(tmp_path / "x.gguf", bpe_spec.replace(pre="gpt2"))   # llama.cpp's name is gpt-2
    with pytest.raises(ExportError, match=r"x.gguf: pre-tokenizer 'gpt2' \(tokenizer.ggml.pre\) is not one edgerun "
                                          r"knows; known: default, .*gpt-2.*qwen2"):
        tokenizer_from_gguf(read_gguf(path))
