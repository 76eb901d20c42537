"""SentencePiece (``tokenizer.ggml.model = llama``) GGUF tokenizers rebuilt with ``tokenizers``: the same ids
as llama.cpp on the same GGUF (Llama's layout, Gemma's no-space-prefix variant, BOS/EOS flags, a
``sentencepiece``-trained model), byte fallback, special tokens, decoding, and clear refusals.

Without the llama.cpp reference built, the ids are still checked against :func:`llama_cpp_spm`, a
plain re-statement of llama.cpp's SentencePiece loop written for this test, and against the
``sentencepiece`` library where it is installed."""

from __future__ import annotations

import heapq
import random
import types

import pytest

from edgerun.core.artifact import TokenizerFacts
from edgerun.core.errors import ExportError
from edgerun.export.llm import tokenizer as T
from edgerun.export.llm.gguf_model import read_gguf
from edgerun.export.llm.tokenizer import build_spm_tokenizer, encode, save_tokenizer, tokenizer_from_gguf
from tiny_tokenizers import (CHAT_CONTROL, MIXED, SPACE, USER_TOKEN, gemma_like, spm_from_sentencepiece,
                             spm_from_tokenizers, write_tokenizer_gguf)

#: the mixed text with a control token and a user-defined token inside, and specials at the edges
SPECIAL_TEXT = f"<s>{CHAT_CONTROL[0]}\nHi there{CHAT_CONTROL[2]}\n{CHAT_CONTROL[1]} x{USER_TOKEN}y {USER_TOKEN} z</s>"
GEMMA_TEXT = "<start_of_turn>user\n<h1>Title</h1>\n\n\n     x\t\t\t\ty<end_of_turn>\n<start_of_turn>model\n"
TEXTS = (MIXED, MIXED[:60] + CHAT_CONTROL[2] + MIXED[60:], SPECIAL_TEXT, GEMMA_TEXT, "", " ", "  leading", "\n\n",
         "a", "日本")


@pytest.fixture(scope="module")
def spm_spec():
    return spm_from_tokenizers()


@pytest.fixture(scope="module")
def variants(spm_spec, tmp_path_factory):
    """GGUFs of the same vocabulary as llama.cpp would see them: Llama's defaults (BOS, space prefix),
    Gemma's (no space prefix), and EOS-but-no-BOS."""
    d = tmp_path_factory.mktemp("spm")
    return {name: write_tokenizer_gguf(d / f"{name}.gguf", spec) for name, spec in {
        "llama": spm_spec,
        "gemma-like": gemma_like(spm_spec),
        "eos": spm_spec.replace(add_bos=False, add_eos=True),
    }.items()}


def _load(path):
    return tokenizer_from_gguf(read_gguf(path))


def llama_cpp_spm(pieces, scores, text: str) -> list[int]:
    """llama.cpp's SentencePiece session restated: UTF-8 characters; repeatedly join the adjacent pair whose
    concatenation is a token of the highest score (leftmost on a tie); what is not a token becomes
    ``<0xXX>`` byte tokens. ``text`` is already escaped (``▁`` for spaces, prefix added)."""
    vocab = {p: i for i, p in enumerate(pieces)}
    sym = list(text)
    nxt, prv = list(range(1, len(sym))) + [-1], list(range(-1, len(sym) - 1))
    heap: list = []

    def push(a: int, b: int) -> None:
        if a >= 0 and b >= 0 and sym[a] + sym[b] in vocab:
            heapq.heappush(heap, (-scores[vocab[sym[a] + sym[b]]], a, b, len(sym[a]) + len(sym[b])))

    for i in range(1, len(sym)):
        push(i - 1, i)
    while heap:
        _, a, b, size = heapq.heappop(heap)
        if not sym[a] or not sym[b] or len(sym[a]) + len(sym[b]) != size:
            continue
        sym[a], sym[b] = sym[a] + sym[b], ""
        nxt[a] = nxt[b]
        if nxt[b] >= 0:
            prv[nxt[b]] = a
        push(prv[a], a)
        push(a, nxt[a])
    out, i = [], 0 if sym else -1
    while i != -1:
        s = sym[i]
        out += [vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()]
        i = nxt[i]
    return out


# ----------------------------------------------------------------------------- against llama.cpp itself
@pytest.mark.parametrize("variant", ["llama", "gemma-like", "eos"])
def test_spm_ids_equal_llama_cpp_on_the_same_gguf(variants, variant, llamacpp):
    path = variants[variant]
    tok, facts = _load(path)
    vocab = llamacpp.vocab(path)
    assert (facts.bos_id, facts.eos_id, facts.add_bos) == (vocab["bos"], vocab["eos"], vocab["add_bos"])
    for text in TEXTS:
        for add_special in (True, False):
            for parse_special in (True, False):
                ours = encode(tok, facts, text, add_special=add_special, parse_special=parse_special)
                theirs = llamacpp.tokenize(path, text, add_special=add_special, parse_special=parse_special)
                assert ours == theirs, (variant, text[:40], add_special, parse_special)


def test_a_sentencepiece_trained_model_gives_llama_cpps_ids(tmp_path, llamacpp):
    spec = spm_from_sentencepiece(workdir=tmp_path)
    if spec is None:
        pytest.skip("the sentencepiece library is not installed (it comes with executorch's pytorch_tokenizers)")
    path = write_tokenizer_gguf(tmp_path / "sp.gguf", spec)
    tok, facts = _load(path)
    for text in TEXTS:
        assert encode(tok, facts, text) == llamacpp.tokenize(path, text), text[:40]
        assert encode(tok, facts, text, parse_special=False) == llamacpp.tokenize(path, text, parse_special=False)


# ----------------------------------------------------------------------------- independent facts
def test_merges_from_scores_join_as_llama_cpps_loop_does_on_random_text(spm_spec):
    tok, _ = build_spm_tokenizer(spm_spec.tokens, spm_spec.scores, spm_spec.types, unk="<unk>")
    rng = random.Random(7)
    words = MIXED.split() + ["the", "and", "river", "stream", "  ", "\t", "é", "😀"]
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 15)))
        text = "".join(c if rng.random() > 0.1 else rng.choice(" \t\nxé日") for c in text)
        want = llama_cpp_spm(spm_spec.tokens, spm_spec.scores, (" " + text).replace(" ", SPACE))
        assert tok.encode(text, add_special_tokens=False).ids == want, text


def test_a_sentencepiece_model_encodes_plain_text_as_the_library_does(tmp_path):
    spec = spm_from_sentencepiece(workdir=tmp_path)
    if spec is None:
        pytest.skip("the sentencepiece library is not installed (it comes with executorch's pytorch_tokenizers)")
    tok, _ = build_spm_tokenizer(spec.tokens, spec.scores, spec.types, unk="<unk>")
    plain = MIXED.replace("\r", "")
    for text in (plain, plain.upper(), "  two leading", "x", "trailing  "):
        assert tok.encode(text, add_special_tokens=False).ids == spec.sp.encode(text), text[:30]


def test_characters_outside_the_vocabulary_fall_back_to_byte_tokens_and_decode_back(variants, spm_spec):
    tok, facts = _load(variants["llama"])
    ids = encode(tok, facts, "€😀", add_special=False)
    assert [spm_spec.tokens[i] for i in ids] == ["▁"] + [f"<0x{b:02X}>" for b in "€😀".encode()]
    assert ids[0] == spm_spec.tokens.index(SPACE)
    for text in (MIXED, "  two leading spaces", "tabs\t\tand\nnewlines\n", "日本語😀"):
        assert tok.decode(encode(tok, facts, text)) == text


def test_the_space_prefix_goes_before_the_text_and_after_each_special_token(variants, spm_spec):
    tok, facts = _load(variants["llama"])
    names = [spm_spec.tokens[i] for i in encode(tok, facts, f"and{CHAT_CONTROL[2]}and{USER_TOKEN}and")]
    assert names == ["<s>", "▁and", CHAT_CONTROL[2], "▁and", USER_TOKEN, "▁and"]
    gemma, gfacts = _load(variants["gemma-like"])
    names = [spm_spec.tokens[i] for i in encode(gemma, gfacts, f"and{CHAT_CONTROL[2]}and")]
    cut = names.index(CHAT_CONTROL[2])
    assert names[0] == "<s>" and not names[1].startswith(SPACE) and not names[cut + 1].startswith(SPACE)
    assert "".join(names[1:]) == f"and{CHAT_CONTROL[2]}and"
    assert gemma.decode(encode(gemma, gfacts, " and")) == " and"   # nothing stripped without the prefix
    assert (facts.add_space_prefix, gfacts.add_space_prefix) == (True, False)


def test_control_tokens_only_when_parsed_user_defined_always(variants, spm_spec):
    tok, facts = _load(variants["llama"])
    end, user = spm_spec.tokens.index(CHAT_CONTROL[2]), spm_spec.tokens.index(USER_TOKEN)
    parsed = encode(tok, facts, f"a{CHAT_CONTROL[2]}b{USER_TOKEN}c", add_special=False)
    literal = encode(tok, facts, f"a{CHAT_CONTROL[2]}b{USER_TOKEN}c", add_special=False, parse_special=False)
    assert end in parsed and user in parsed
    assert end not in literal and user in literal
    assert tok.decode(parsed) == "a b" + USER_TOKEN + " c"          # control tokens are not decoded
    assert CHAT_CONTROL[2] in facts.special_tokens and USER_TOKEN not in facts.special_tokens


def test_bos_eos_flags_follow_llama_cpps_defaults_and_the_gguf(variants):
    _, llama = _load(variants["llama"])
    _, eos = _load(variants["eos"])
    assert (llama.add_bos, llama.add_eos, llama.bos_id, llama.eos_id, llama.unk_id) == (True, False, 1, 2, 0)
    assert (eos.add_bos, eos.add_eos) == (False, True)
    assert llama.kind == "llama SentencePiece" and llama.pre_tokenizer is None
    assert 2 in llama.eog_ids


def test_facts_round_trip_through_the_manifest_and_old_ones_read_with_defaults(variants):
    _, facts = _load(variants["eos"])
    again = TokenizerFacts.from_json(facts.to_json(), "llm.tokenizer")
    assert again == facts and again.add_eos and again.add_space_prefix and again.eog_ids
    old = {"file": "tokenizer.json", "kind": "gpt2 byte-level BPE", "bos_id": 1, "eos_id": 2, "add_bos": False}
    read = TokenizerFacts.from_json(old, "llm.tokenizer")
    assert (read.add_eos, read.add_space_prefix, read.unk_id, read.eog_ids) == (False, False, None, ())
    assert "add_eos" not in read.to_json()   # an old manifest is written back as it was


def test_saved_tokenizer_json_reloads_with_the_same_ids(variants, tmp_path):
    from tokenizers import Tokenizer

    tok, facts = _load(variants["llama"])
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TEXTS:
        assert again.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False).ids


# ----------------------------------------------------------------------------- refusals
def _fake_gguf(**fields):
    """An object shaped like GGUFFile whose reader has just these fields."""
    class Field:
        def __init__(self, value):
            self.value, self.data = value, value if isinstance(value, list) else [value]

        def contents(self):
            return self.value

    return types.SimpleNamespace(path="x.gguf", reader=types.SimpleNamespace(
        fields={k: Field(v) for k, v in fields.items() if v is not None}))


def test_broken_sentencepiece_metadata_is_refused_naming_the_field(spm_spec):
    base = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": spm_spec.tokens,
            "tokenizer.ggml.scores": spm_spec.scores, "tokenizer.ggml.token_type": spm_spec.types}

    def refused(match, **changes):
        with pytest.raises(ExportError, match=match):
            tokenizer_from_gguf(_fake_gguf(**{**base, **changes}))

    refused(r"x.gguf: the SentencePiece tokenizer has no tokenizer.ggml.scores", **{"tokenizer.ggml.scores": None})
    refused(r"x.gguf: \d+ tokens but only 3 scores", **{"tokenizer.ggml.scores": [0.0, 0.0, 0.0]})
    refused(r"x.gguf: \d+ tokens but only 2 token types", **{"tokenizer.ggml.token_type": [1, 1]})
    refused(r"token 'a' appears twice .*ids \d+ and \d+", **{"tokenizer.ggml.tokens": spm_spec.tokens + ["a"],
                                                            "tokenizer.ggml.scores": spm_spec.scores + [0.0],
                                                            "tokenizer.ggml.token_type": spm_spec.types + [1]})
    refused(r"tokenizer model 'bert'.*'gpt2' and 'llama'", **{"tokenizer.ggml.model": "bert"})
    refused(r"token type 0 \(tokenizer.ggml.token_type\) is 'x', not an integer",
            **{"tokenizer.ggml.token_type": ["x"] * len(spm_spec.tokens)})
    refused(r"score 0 \(tokenizer.ggml.scores\) is 'x', not a number",
            **{"tokenizer.ggml.scores": ["x"] * len(spm_spec.tokens)})
    refused(r"tokenizer.chat_template is 1048577 characters long", **{"tokenizer.chat_template": "x" * (1 + (1 << 20))})
    refused(r"tokenizer.chat_template is a list", **{"tokenizer.chat_template": ["{{ x }}"]})
    refused(r"NaN", **{"tokenizer.ggml.scores": [float("nan")] * len(spm_spec.tokens)})


def test_a_vocabulary_over_the_bound_is_refused_before_it_is_read(spm_spec, monkeypatch):
    monkeypatch.setattr(T, "MAX_VOCAB", 100)
    gguf = _fake_gguf(**{"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": spm_spec.tokens,
                         "tokenizer.ggml.scores": spm_spec.scores})
    with pytest.raises(ExportError, match=r"x.gguf: tokenizer.ggml.tokens has \d+ tokens; edgerun reads at most 100"):
        tokenizer_from_gguf(gguf)
    monkeypatch.setattr(T, "MAX_VOCAB", 1 << 21)
    monkeypatch.setattr(T, "MAX_TOKEN_BYTES", 4)
    with pytest.raises(ExportError, match=r"token \d+ is \d+ bytes long; edgerun accepts tokens of at most 4"):
        tokenizer_from_gguf(gguf)


# ----------------------------------------------------------------------------- what generate feeds the device
def _artifact_tokenizer(path, tmp_path, template=None):
    """edgerun.llm's ArtifactTokenizer over the tokenizer.json an export of ``path`` would write."""
    import dataclasses

    from edgerun.llm import ArtifactTokenizer

    tok, facts = _load(path)
    sha = save_tokenizer(tok, tmp_path / "tokenizer.json")
    facts = dataclasses.replace(facts, sha256=sha, chat_template=template)
    manifest = types.SimpleNamespace(dir=tmp_path, file=lambda rel, where: tmp_path / rel,
                                     llm=types.SimpleNamespace(tokenizer=facts))
    return ArtifactTokenizer(manifest)


@pytest.mark.parametrize("variant", ["llama", "eos"])
def test_the_prompt_ids_generate_sends_are_llama_cpps(variants, variant, tmp_path, llamacpp):
    at = _artifact_tokenizer(variants[variant], tmp_path)
    for text in (MIXED, SPECIAL_TEXT[3:]):
        assert at.encode(text) == llamacpp.tokenize(variants[variant], text)


def test_a_chat_prompt_gets_one_bos_whether_or_not_the_template_writes_it(variants, tmp_path):
    plain = _artifact_tokenizer(variants["llama"], tmp_path, template="{{ messages[0]['content'] }}")
    with_bos = _artifact_tokenizer(variants["llama"], tmp_path, template="{{ bos_token }}{{ messages[0]['content'] }}")
    assert plain.encode("hi", chat=True) == with_bos.encode("hi", chat=True) == plain.encode("hi")
    assert plain.encode("hi")[0] == 1 and plain.encode("hi")[1] != 1


def test_an_8000_piece_model_trained_on_pythons_own_sources_gives_llama_cpps_ids(tmp_path, llamacpp):
    """A vocabulary of a real model's scale: sentencepiece's BPE on 2 MB of the standard library's Python
    files (shipped with the interpreter), checked on 200 kB of other files in one llama.cpp call."""
    import sysconfig
    from pathlib import Path

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 40:
        pytest.skip("the standard library's sources are not installed")
    random.Random(0).shuffle(files)
    train = "".join(f.read_text(errors="replace") for f in files[:len(files) // 2])[:2_000_000]
    (tmp_path / "corpus.txt").write_text(train)
    spec = spm_from_sentencepiece(8000, workdir=tmp_path, corpus=tmp_path / "corpus.txt", coverage=0.9995)
    if spec is None:
        pytest.skip("the sentencepiece library is not installed (it comes with executorch's pytorch_tokenizers)")
    path = write_tokenizer_gguf(tmp_path / "py.gguf", spec)
    tok, facts = _load(path)
    text = "".join(f.read_text(errors="replace") for f in files[len(files) // 2:])[:200_000] + MIXED + SPECIAL_TEXT
    ours = encode(tok, facts, text)
    assert len(ours) > 40_000 and ours == llamacpp.tokenize(path, text)
    plain = text[:50_000]
    assert encode(tok, facts, plain, add_special=False, parse_special=False) == spec.sp.encode(plain)
