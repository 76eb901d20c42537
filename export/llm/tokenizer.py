"""The tokenizer of a GGUF, rebuilt with ``tokenizers`` from its metadata and saved as ``tokenizer.json``.

A GGUF whose ``tokenizer.ggml.model`` is ``gpt2`` carries a byte-level BPE: the token strings
(``tokenizer.ggml.tokens``, index = id), the merges (``tokenizer.ggml.merges``, ``"a b"`` in priority
order) and a type per token (``tokenizer.ggml.token_type``; 3 = control, e.g. ``<|im_start|>``).
Control tokens become special tokens of the ``tokenizers`` model, so they never split into pieces
and are matched before BPE. ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer (the regex that
cuts text before BPE); the ones edgerun knows are in :data:`PRE_TOKENIZERS`, any other is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.artifact import TokenizerFacts  # what the manifest's llm.tokenizer records

from ..errors import ExportError

STAGE = "load model"
CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL

#: the GPT-2 split: contractions, letters, digits, other symbols, whitespace
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: Llama 3's split (``llama-bpe``): digits in threes, case-insensitive contractions
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: llama.cpp pre-tokenizer name -> (split each digit first, regex)
PRE_TOKENIZERS: dict[str, tuple[bool, str]] = {
    "gpt2": (False, GPT2_REGEX),
    "default": (False, GPT2_REGEX),
    "smollm": (True, GPT2_REGEX),       # SmolLM / SmolLM2: every digit alone, then GPT-2's split
    "llama-bpe": (False, LLAMA3_REGEX),
    "llama3": (False, LLAMA3_REGEX),
}


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def build_tokenizer(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], *,
                    pre: str = "gpt2", source: str = "tokenizer"):
    """A ``tokenizers.Tokenizer`` for a GPT-2 byte-level BPE given as GGUF stores it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if pre not in PRE_TOKENIZERS:
        raise ExportError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one edgerun knows; "
                          f"known: {', '.join(PRE_TOKENIZERS)}.", stage=STAGE,
                          hint="Its text would be split differently from llama.cpp; add the regex to "
                               "edgerun.export.llm.tokenizer.PRE_TOKENIZERS.")
    if len(token_types) != len(tokens):
        raise ExportError(f"{source}: {len(tokens)} tokens but {len(token_types)} token types.", stage=STAGE)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = []
    for k, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep:
            raise ExportError(f"{source}: merge {k} ({m!r}) is not two tokens separated by a space.", stage=STAGE)
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    digits, regex = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, token_types) if int(ty) == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok, tuple(specials)


def tokenizer_from_gguf(g) -> tuple[Any, TokenizerFacts]:
    """``(tokenizers.Tokenizer, TokenizerFacts)`` from an opened GGUF (:class:`.gguf_model.GGUFFile`); the
    facts' ``file``/``sha256`` are filled in when the tokenizer is saved into an artifact."""
    reader, source = g.reader, str(g.path)
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ExportError(f"{source} carries no tokenizer (no tokenizer.ggml.model).", stage=STAGE)
    if model != "gpt2":
        raise ExportError(f"{source}: tokenizer model {model!r}; edgerun rebuilds only 'gpt2' (byte-level BPE) "
                          "tokenizers from a GGUF.", stage=STAGE,
                          hint="SentencePiece ('llama') GGUF tokenizers are not supported yet.")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    types = _field(reader, "tokenizer.ggml.token_type")
    if not tokens or merges is None or types is None:
        raise ExportError(f"{source}: the tokenizer lacks tokenizer.ggml.tokens, merges or token_type.", stage=STAGE)
    pre = str(_field(reader, "tokenizer.ggml.pre", "default"))
    tok, specials = build_tokenizer(tokens, merges, types, pre=pre, source=source)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    facts = TokenizerFacts(kind="gpt2 byte-level BPE", pre_tokenizer=pre, vocab_size=len(tokens),
                           bos_id=None if bos is None else int(bos), eos_id=None if eos is None else int(eos),
                           add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
                           special_tokens=tuple(specials), chat_template=_field(reader, "tokenizer.chat_template"))
    return tok, facts


def save_tokenizer(tok, path: str | Path) -> str:
    """Write ``tokenizer.json``; returns its sha256."""
    path = Path(path)
    tok.save(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_chat(template: str, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    """Render a GGUF chat template (Jinja) in a sandbox, as llama.cpp and transformers do."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token)
