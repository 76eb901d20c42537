"""The tokenizer of a GGUF, rebuilt with ``tokenizers`` from its metadata and saved as ``tokenizer.json``,
so that it gives the ids llama.cpp gives for the same GGUF.

Two kinds of GGUF tokenizer are rebuilt (``tokenizer.ggml.model``):

``gpt2`` — a byte-level BPE: the token strings (``tokenizer.ggml.tokens``, index = id), the merges
(``tokenizer.ggml.merges``, ``"a b"`` in priority order) and ``tokenizer.ggml.pre``, llama.cpp's name of
the pre-tokenizer: the regexes that cut text into words before BPE (:data:`BPE_PRE_TOKENIZERS`, copied
from llama.cpp's ``llm_tokenizer_bpe`` per ``LLAMA_VOCAB_PRE_TYPE_*``; a name edgerun does not know is
refused, naming the known ones). Some types also take a word that is a whole token as is
(``ignore_merges``: Llama 3, Tekken).

``llama`` — SentencePiece (Llama 2, TinyLlama, Mistral 7B, Phi-3, Gemma 1-3): tokens, scores
(``tokenizer.ggml.scores``) and types. llama.cpp splits the text into UTF-8 characters and repeatedly
joins the adjacent pair whose concatenation is a token with the *highest score* (the leftmost on a tie);
a character that is no token becomes its bytes (``<0xXX>`` tokens). That is a BPE whose merges are every
split ``a + b`` of a token ``t`` (both halves tokens) ranked by ``t``'s score: built so, ``tokenizers``'
BPE (with ``byte_fallback``) joins the same pairs in the same order. Spaces become ``▁`` and, with
``tokenizer.ggml.add_space_prefix`` (true unless the GGUF says otherwise; Gemma's says false), a ``▁``
is put before the text and after every special token, as llama.cpp does. One difference remains: two
*different* tokens with the *same* score are ranked by id here, by text position in llama.cpp; the
BPE-trained SentencePiece vocabularies above give every token its own score.

Special tokens, in both kinds, are matched in the raw text before the model, as llama.cpp's
``tokenizer_st_partition`` does: control (type 3) and unknown (2) tokens as special tokens (they are
skipped when decoding, and not matched when special-token parsing is off), user-defined (4) tokens
always. llama.cpp also treats a few tokens as control by their text whatever their type (``<|im_end|>``,
``<|eot_id|>``, ``<end_of_turn>`` ... :data:`EOG_TEXTS`), and for a model named Phi-3 strips spaces after
special tokens; both are done here too. (llama.cpp matches the longest special token first over the whole
text, ``tokenizers`` the leftmost-longest: they differ only for special tokens that overlap in the text.)

Whether BOS/EOS are added (``tokenizer.ggml.add_bos_token`` / ``add_eos_token``, with llama.cpp's
defaults per kind) is recorded in :class:`~edgerun.core.artifact.TokenizerFacts`; the artifact's user
adds them (``tokenizer.json`` has no post-processor).

The chat template it carries is rendered by :mod:`.chat`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.artifact import TokenizerFacts  # what the manifest's llm.tokenizer records

from ..errors import ExportError

STAGE = "load model"

# llama.cpp's LLAMA_TOKEN_TYPE_* (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
CONTROL_TYPES = (CONTROL, UNKNOWN)  # matched only when special tokens are parsed; not decoded

#: Bounds on what a GGUF may ask us to build (checked before the tokenizer is built): the largest
#: vocabularies in use have ~260k tokens (Gemma 3); tokens are short strings.
MAX_VOCAB = 1 << 21
MAX_TOKEN_BYTES = 1 << 14
MAX_VOCAB_BYTES = 1 << 26
MAX_MERGES = 1 << 24
MAX_TEMPLATE_CHARS = 1 << 20   # a chat template (real ones are a few KB)

SPACE = "\u2581"  # ▁, SentencePiece's escaped space

# ------------------------------------------------------------------------------------ BPE pre-tokenizers
# The regexes are llama.cpp's (src/llama-vocab.cpp, llm_tokenizer_bpe), applied one after another, each
# to the pieces the previous one cut, keeping what a regex does not match as pieces of their own (as
# ``tokenizers``' Split "isolated" does). llama.cpp rewrites some upstream regexes into forms its
# std::regex runs (case-insensitive groups spelled out, Unicode case classes as lookaheads); those forms
# are kept, since they decide llama.cpp's split and Oniguruma reads them the same way.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_UPPERISH, _LOWERISH = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+{_CONTRACTIONS}?"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*{_CONTRACTIONS}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# (the non-ASCII classes are written as escapes: Unicode normalization of this file must not touch them).
# llama.cpp runs these through std::wregex after replacing every non-ASCII whitespace character by \x0b,
# so a class's range that holds whitespace (U+0800-U+4E00 holds U+2000-U+200A, U+3000 ...) never matches
# one there: "&&[^\s]" says the same to Oniguruma.
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff&&[^\\s]]+"
_DEEPSEEK_LLM = (
    r"[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002&&[^\\s]]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
)
_DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")
_DEEPSEEK3 = (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
              r'[!"#$%&' + r"'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
_BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")


@dataclasses.dataclass(frozen=True)
class BPEPreTokenizer:
    """One of llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_*`` for byte-level BPE: the regexes it cuts text with,
    whether a word that is a whole token skips the merges, and llama.cpp's default for adding BOS (the
    GGUF's ``tokenizer.ggml.add_bos_token`` overrides it)."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    has_bos: bool = True       # False: no BOS unless the GGUF names one (llama.cpp's chatglm types)


def _family(pre: BPEPreTokenizer, *names: str) -> dict[str, BPEPreTokenizer]:
    return {n: pre for n in names}


#: ``tokenizer.ggml.pre`` -> how llama.cpp pre-tokenizes that name (names grouped as llama.cpp groups them)
BPE_PRE_TOKENIZERS: dict[str, BPEPreTokenizer] = {
    # no name, or "default": llama.cpp's default split (punctuation runs, GPT-2, digit runs in threes)
    **_family(BPEPreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")), "default"),
    **_family(BPEPreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True),
              "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
    **_family(BPEPreTokenizer((_LLAMA3,)), "dbrx", "smaug-bpe"),
    **_family(BPEPreTokenizer((_LLAMA3,), has_bos=False), "chatglm-bpe"),
    **_family(BPEPreTokenizer((_LLAMA3,), ignore_merges=True, has_bos=False), "glm4", "glm5"),
    **_family(BPEPreTokenizer((_GPT2,)), "gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion",
              "granite-docling", "exaone4", "a.x-4.0", "mellum", "gigachat"),
    **_family(BPEPreTokenizer((r"\p{N}", _GPT2)), "smollm", "starcoder", "refact", "command-r", "codeshell",
              "exaone", "minerva-7b", "mellum2"),
    **_family(BPEPreTokenizer((_QWEN2,)), "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
              "hunyuan", "solar-open"),
    **_family(BPEPreTokenizer((_QWEN35,)), "qwen35"),
    **_family(BPEPreTokenizer(_DEEPSEEK_LLM), "deepseek-llm"),
    **_family(BPEPreTokenizer(_DEEPSEEK_CODER), "deepseek-coder"),
    **_family(BPEPreTokenizer(_DEEPSEEK3), "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
    **_family(BPEPreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")), "falcon"),
    **_family(BPEPreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True), "tekken"),
    **_family(BPEPreTokenizer((_GPT4O,)), "gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
    **_family(BPEPreTokenizer((_BLOOM,)), "poro-chat", "bloom", "gpt3-finnish"),
    **_family(BPEPreTokenizer((_BLOOM, r"\p{N}")), "viking"),
    **_family(BPEPreTokenizer((_SEED_CODER,)), "seed-coder"),
    **_family(BPEPreTokenizer((_BAILINGMOE,)), "bailingmoe", "bailingmoe2", "llada-moe"),
    **_family(BPEPreTokenizer((_QWEN2,)), "grok-2"),
}

# ------------------------------------------------------------------------- llama.cpp's special texts
#: Texts llama.cpp makes control tokens whatever their type (its end-of-generation list, llama-vocab.cpp).
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
             "<｜end▁of▁sentence｜>", "[e~[")
#: ... and these when the GGUF names no token for the role (key -> texts, llama.cpp's auto-detection)
_AUTO_CONTROL = {
    "tokenizer.ggml.eot_token_id": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                    "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
                                    "<end_of_utterance>"),
    "tokenizer.ggml.eom_token_id": ("<|eom_id|>",),
    "tokenizer.ggml.fim_pre_token_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>",
                                        "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "tokenizer.ggml.fim_suf_token_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>",
                                        "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "tokenizer.ggml.fim_mid_token_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>",
                                        "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}
#: gpt-oss's tokens llama.cpp always renders (it makes them user-defined)
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


# ------------------------------------------------------------------------------------ reading the GGUF
def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _count(reader, key: str) -> int | None:
    """Elements of an array field, without reading them (``None``: no such field)."""
    f = reader.fields.get(key)
    return None if f is None else len(f.data)


def _bounded_array(reader, key: str, source: str, limit: int, what: str) -> list | None:
    n = _count(reader, key)
    if n is None:
        return None
    if n > limit:
        raise ExportError(f"{source}: {key} has {n} {what}; edgerun reads at most {limit}.", stage=STAGE,
                          hint="The file is damaged or not a language model's tokenizer.")
    value = _field(reader, key)
    if not isinstance(value, list):
        raise ExportError(f"{source}: {key} is not an array (it is {type(value).__name__}).", stage=STAGE)
    return value


def _check_tokens(tokens: Sequence[Any], source: str) -> list[str]:
    """Token strings as llama.cpp keeps them: bounded, an empty one renamed ``[EMPTY_i]``, no duplicates."""
    if not tokens:
        raise ExportError(f"{source}: tokenizer.ggml.tokens is empty.", stage=STAGE)
    if len(tokens) > MAX_VOCAB:
        raise ExportError(f"{source}: {len(tokens)} tokens; edgerun reads at most {MAX_VOCAB}.", stage=STAGE)
    out, seen, total = [], {}, 0
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise ExportError(f"{source}: token {i} of tokenizer.ggml.tokens is not a string.", stage=STAGE)
        n = len(t.encode("utf-8", "surrogatepass"))
        if n > MAX_TOKEN_BYTES:
            raise ExportError(f"{source}: token {i} is {n} bytes long; edgerun accepts tokens of at most "
                              f"{MAX_TOKEN_BYTES} bytes.", stage=STAGE, hint="The file is damaged.")
        total += n
        if total > MAX_VOCAB_BYTES:
            raise ExportError(f"{source}: the token strings exceed {MAX_VOCAB_BYTES} bytes.", stage=STAGE)
        if not t:
            t = f"[EMPTY_{i}]"   # llama.cpp's name for an empty token
        if t in seen:
            raise ExportError(f"{source}: token {t!r} appears twice in tokenizer.ggml.tokens (ids {seen[t]} and "
                              f"{i}); llama.cpp refuses such a vocabulary too.", stage=STAGE,
                              hint="Convert the model again with llama.cpp's convert_hf_to_gguf.py.")
        seen[t] = i
        out.append(t)
    return out


def _types(types: Sequence[Any] | None, n: int, source: str) -> list[int]:
    if types is None:
        return [NORMAL] * n     # llama.cpp: no token types -> every token normal
    if len(types) < n:
        raise ExportError(f"{source}: {n} tokens but only {len(types)} token types (tokenizer.ggml.token_type).",
                          stage=STAGE, hint="The file is damaged or was written by an unusual converter.")
    bad = next((i for i, t in enumerate(types[:n]) if not isinstance(t, int) or isinstance(t, bool)), None)
    if bad is not None:
        raise ExportError(f"{source}: token type {bad} (tokenizer.ggml.token_type) is {types[bad]!r}, not an integer.",
                          stage=STAGE, hint="The file is damaged.")
    return [int(t) for t in types[:n]]


def _token_id(reader, key: str, n: int, default: int | None) -> int | None:
    """A special token's id as llama.cpp takes it: the GGUF's when in range, else the kind's default."""
    value = _field(reader, key)
    if default is not None and not 0 <= default < n:
        default = None
    if value is None:
        return default
    value = int(value)
    return value if 0 <= value < n else default


def _special_types(reader, tokens: Sequence[str], types: Sequence[int]) -> list[int]:
    """Token types as llama.cpp ends up with them: texts it treats as control whatever the GGUF says."""
    types = list(types)
    index = {t: i for i, t in enumerate(tokens)}
    for text in EOG_TEXTS:
        i = index.get(text)
        if i is not None and types[i] not in CONTROL_TYPES:
            types[i] = CONTROL
    for key, texts in _AUTO_CONTROL.items():
        if _field(reader, key) is not None:
            continue
        found = [index[t] for t in texts if t in index]
        if found and types[found[0]] not in CONTROL_TYPES:
            types[found[0]] = CONTROL
    for text in _ALWAYS_USER_DEFINED:
        if text in index:
            types[index[text]] = USER_DEFINED
    return types


def _is_phi3(reader) -> bool:
    name = str(_field(reader, "general.name", "") or "").lower()
    return "phi-3" in name or "phi3" in name


def _added_tokens(tokens: Sequence[str], types: Sequence[int], *, rstrip: bool = False):
    """Control/unknown tokens (special: not decoded, matched only when special tokens are parsed) and
    user-defined ones (always matched), each matched on the raw text. ``rstrip``: spaces after a special
    token are dropped (llama.cpp does so for Phi-3, but not after ``<unk>``, ``<s>``, ``<|endoftext|>``)."""
    from tokenizers import AddedToken

    out = []
    for t, ty in zip(tokens, types):
        if ty in (CONTROL, UNKNOWN, USER_DEFINED):
            strip = rstrip and t not in ("<unk>", "<s>", "<|endoftext|>")
            out.append(AddedToken(t, special=ty != USER_DEFINED, normalized=False, rstrip=strip, lstrip=False,
                                  single_word=False))
        elif rstrip and t == "</s>":
            out.append(AddedToken(t, special=False, normalized=False, rstrip=True))
    return out


# ------------------------------------------------------------------------------------ byte-level BPE
def build_tokenizer(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], *,
                    pre: str = "gpt-2", source: str = "tokenizer", rstrip_specials: bool = False):
    """A ``tokenizers.Tokenizer`` for a GPT-2 byte-level BPE as a GGUF stores it (``pre``: llama.cpp's
    pre-tokenizer name). Returns ``(tokenizer, control token texts)``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if pre not in BPE_PRE_TOKENIZERS:
        raise ExportError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one edgerun knows; "
                          f"known: {', '.join(BPE_PRE_TOKENIZERS)}.", stage=STAGE,
                          hint="Its text would be split differently from llama.cpp; add its regexes (llama.cpp's "
                               "llm_tokenizer_bpe) to edgerun.export.llm.tokenizer.BPE_PRE_TOKENIZERS.")
    tokens = _check_tokens(tokens, source)
    types = _types(token_types, len(tokens), source)
    if len(merges) > MAX_MERGES:
        raise ExportError(f"{source}: {len(merges)} merges; edgerun reads at most {MAX_MERGES}.", stage=STAGE)
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = []
    for k, m in enumerate(merges):
        if not isinstance(m, str):
            raise ExportError(f"{source}: merge {k} is not a string.", stage=STAGE)
        cut = m.find(" ", 1)    # llama.cpp splits at the first space after the first character
        if cut < 0:
            raise ExportError(f"{source}: merge {k} ({m!r}) is not two tokens separated by a space.", stage=STAGE)
        a, b = m[:cut], m[cut + 1:]
        if a not in vocab or b not in vocab or a + b not in vocab:
            missing = next(x for x in (a, b, a + b) if x not in vocab)
            raise ExportError(f"{source}: merge {k} ({m!r}) names {missing!r}, which is not a token.", stage=STAGE,
                              hint="The merges do not belong to this vocabulary: the file is damaged.")
        pairs.append((a, b))
    spec = BPE_PRE_TOKENIZERS[pre]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False,
                               ignore_merges=spec.ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(_added_tokens(tokens, types, rstrip=rstrip_specials))
    return tok, tuple(t for t, ty in zip(tokens, types) if ty == CONTROL)


# ------------------------------------------------------------------------------------ SentencePiece
def spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """llama.cpp's SentencePiece joins as BPE merges: every split of a token into two tokens, the tokens
    in order of score (highest first; equal scores by id)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[str, str]] = []
    for i in sorted(range(len(tokens)), key=lambda i: (-scores[i], i)):
        t = tokens[i]
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                merges.append((a, b))
        if len(merges) > MAX_MERGES:
            raise ExportError(f"the SentencePiece vocabulary gives more than {MAX_MERGES} merges.", stage=STAGE)
    return merges


def build_spm_tokenizer(tokens: Sequence[str], scores: Sequence[float], token_types: Sequence[int], *,
                        add_space_prefix: bool = True, unk: str | None = None, source: str = "tokenizer",
                        rstrip_specials: bool = False):
    """A ``tokenizers.Tokenizer`` that tokenizes as llama.cpp's SentencePiece (``LLAMA_VOCAB_TYPE_SPM``)
    tokenizer does for these tokens, scores and types. Returns ``(tokenizer, control token texts)``."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = _check_tokens(tokens, source)
    types = _types(token_types, len(tokens), source)
    if len(scores) < len(tokens):
        raise ExportError(f"{source}: {len(tokens)} tokens but only {len(scores)} scores (tokenizer.ggml.scores).",
                          stage=STAGE, hint="The file is damaged or was written by an unusual converter.")
    bad = next((i for i, x in enumerate(scores[:len(tokens)]) if not isinstance(x, (int, float))
                or isinstance(x, bool)), None)
    if bad is not None:
        raise ExportError(f"{source}: score {bad} (tokenizer.ggml.scores) is {scores[bad]!r}, not a number.",
                          stage=STAGE, hint="The file is damaged.")
    scores = [float(s) for s in scores[:len(tokens)]]
    if any(s != s for s in scores):
        raise ExportError(f"{source}: tokenizer.ggml.scores holds NaN; merges cannot be ranked.", stage=STAGE)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores), unk_token=unk, fuse_unk=False,
                               byte_fallback=True))
    steps = [normalizers.Prepend(SPACE)] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    tok.add_tokens(_added_tokens(tokens, types, rstrip=rstrip_specials))
    return tok, tuple(t for t, ty in zip(tokens, types) if ty == CONTROL)


# ------------------------------------------------------------------------------------ from a GGUF
KINDS = {"gpt2": "gpt2 byte-level BPE", "llama": "llama SentencePiece"}


def tokenizer_from_gguf(g) -> tuple[Any, TokenizerFacts]:
    """``(tokenizers.Tokenizer, TokenizerFacts)`` from an opened GGUF (:class:`.gguf_model.GGUFFile`); the
    facts' ``file``/``sha256`` are filled in when the tokenizer is saved into an artifact."""
    reader, source = g.reader, str(g.path)
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ExportError(f"{source} carries no tokenizer (no tokenizer.ggml.model).", stage=STAGE)
    if model not in KINDS:
        raise ExportError(f"{source}: tokenizer model {model!r} (tokenizer.ggml.model); edgerun rebuilds "
                          f"{' and '.join(repr(k) for k in KINDS)} tokenizers (byte-level BPE and SentencePiece).",
                          stage=STAGE, hint="Use a GGUF whose tokenizer is one of those (Llama, Mistral, Qwen, "
                                            "SmolLM, Phi, Gemma 1-3 and TinyLlama GGUFs are).")
    tokens = _check_tokens(_bounded_array(reader, "tokenizer.ggml.tokens", source, MAX_VOCAB, "tokens") or [],
                           source)
    n = len(tokens)
    raw_types = _bounded_array(reader, "tokenizer.ggml.token_type", source, MAX_VOCAB, "token types")
    types = _special_types(reader, tokens, _types(raw_types, n, source))
    rstrip = _is_phi3(reader)
    pre_name = _field(reader, "tokenizer.ggml.pre")
    if model == "gpt2":
        merges = _bounded_array(reader, "tokenizer.ggml.merges", source, MAX_MERGES, "merges")
        if merges is None:
            raise ExportError(f"{source}: the byte-level BPE tokenizer lacks tokenizer.ggml.merges.", stage=STAGE)
        pre = "default" if not pre_name else str(pre_name)
        tok, specials = build_tokenizer(tokens, merges, types, pre=pre, source=source, rstrip_specials=rstrip)
        spec = BPE_PRE_TOKENIZERS[pre]
        bos_default, eos_default, unk_default = (11, 11, None) if spec.has_bos else (None, 11, None)
        add_bos_default, add_space_default = spec.add_bos, False
    else:
        scores = _bounded_array(reader, "tokenizer.ggml.scores", source, MAX_VOCAB, "scores")
        if scores is None:
            raise ExportError(f"{source}: the SentencePiece tokenizer has no tokenizer.ggml.scores; without them "
                              "llama.cpp joins pieces leftmost-first, which edgerun does not reproduce.", stage=STAGE)
        pre = None
        bos_default, eos_default, unk_default = 1, 2, 0
        add_bos_default, add_space_default = True, True
    bos = _token_id(reader, "tokenizer.ggml.bos_token_id", n, bos_default)
    eos = _token_id(reader, "tokenizer.ggml.eos_token_id", n, eos_default)
    unk = _token_id(reader, "tokenizer.ggml.unknown_token_id", n, unk_default)
    add_space_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", add_space_default))
    if model == "llama":
        tok, specials = build_spm_tokenizer(tokens, scores, types, add_space_prefix=add_space_prefix,
                                            unk=tokens[unk] if unk is not None else None, source=source,
                                            rstrip_specials=rstrip)
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    for flag, tid, key in ((add_bos, bos, "bos"), (add_eos, eos, "eos")):
        if flag and tid is None:
            raise ExportError(f"{source}: tokenizer.ggml.add_{key}_token is true but the GGUF names no {key.upper()} "
                              f"token (tokenizer.ggml.{key}_token_id); llama.cpp refuses it too.", stage=STAGE)
    template = _field(reader, "tokenizer.chat_template")
    if template is not None and (not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS):
        what = f"{len(template)} characters long" if isinstance(template, str) else f"a {type(template).__name__}"
        raise ExportError(f"{source}: tokenizer.chat_template is {what}; edgerun takes a Jinja template of at most "
                          f"{MAX_TEMPLATE_CHARS} characters.", stage=STAGE, hint="The file is damaged or hostile.")
    eog = sorted({i for i, t in enumerate(tokens) if t in EOG_TEXTS} | ({eos} if eos is not None else set()))
    facts = TokenizerFacts(kind=KINDS[model], pre_tokenizer=pre, vocab_size=n, bos_id=bos, eos_id=eos, add_bos=add_bos,
                           add_eos=add_eos, add_space_prefix=add_space_prefix if model == "llama" else False,
                           unk_id=unk, eog_ids=tuple(eog), special_tokens=tuple(specials), chat_template=template)
    return tok, facts


def encode(tok, facts: TokenizerFacts, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
    """Ids for ``text`` as llama.cpp's ``llama_tokenize(text, add_special, parse_special)`` gives them: BOS/EOS
    added as the facts say (when ``add_special``), special tokens matched in the text (when ``parse_special``)."""
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = not parse_special
    try:
        ids = tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = previous
    if add_special and facts.add_bos and facts.bos_id is not None:
        ids = [facts.bos_id] + ids
    if add_special and facts.add_eos and facts.eos_id is not None:
        ids = ids + [facts.eos_id]
    return ids


def save_tokenizer(tok, path: str | Path) -> str:
    """Write ``tokenizer.json``; returns its sha256."""
    path = Path(path)
    tok.save(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()
