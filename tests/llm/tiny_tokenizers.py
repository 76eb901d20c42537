"""Tiny GGUF tokenizers made here, for comparing edgerun's rebuilt tokenizer with llama.cpp's on the same file.

* :func:`spm_from_tokenizers` -- a SentencePiece vocabulary laid out as Llama 2's is (``<unk>``, ``<s>``,
  ``</s>``, the 256 ``<0xXX>`` byte tokens, then pieces with falling scores, then single characters), its
  pieces learned by ``tokenizers``' BPE trainer on export/llm/data/train.txt, plus whitespace-run pieces,
  chat control tokens and a user-defined token;
* :func:`spm_from_sentencepiece` -- the same trained by the ``sentencepiece`` library itself (a BPE model
  with byte fallback, as Llama's); ``None`` when the library is not installed (it comes with executorch's
  pytorch_tokenizers, not as an edgerun dependency);
* :func:`bpe_from_tokenizers` -- a byte-level BPE (GPT-2 style) for the ``gpt2`` pre-tokenizer tests;
* :func:`write_tokenizer_gguf` -- a 1-layer Llama GGUF (random weights) carrying one of those, with the
  tokenizer keys llama.cpp reads (``tokenizer.ggml.model``, ``.tokens``, ``.scores``, ``.token_type``,
  ``.merges``, ``.pre``, BOS/EOS/UNK ids, ``add_bos_token``/``add_eos_token``/``add_space_prefix``).

:data:`MIXED` is the text the tests tokenize: accents, emoji, CJK, code with tabs, digits, whitespace
runs (and Unicode spaces: ideographic, no-break, em, line separator), newlines; tests put a control token
inside it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "export" / "llm" / "data"
SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

MIXED = ("The café's crème brûlée costs 12345 € — naïve Ünïcödé!  Emoji: 😀🚀 and 👍🏽.\n"
         "日本語のテキストと中文字符。한국어 텍스트.\u3000全角\u00a0nbsp\u2003em \u2028sep\n"
         "def f(x):\n\treturn x  *  2\t# tab\n\n\n"
         "    four leading spaces,   three inside, trailing   \n"
         "digits 0 7 42 2024 3.14159 1e-9 0x1F; it's they're we'll I'd.\r\nend")

CHAT_CONTROL = ("<|user|>", "<|assistant|>", "<|end|>")
USER_TOKEN = "<tool>"


@dataclasses.dataclass
class TokenizerSpec:
    """The tokenizer keys of a GGUF (llama.cpp's names in the comments)."""

    model: str                                  # tokenizer.ggml.model: "llama" or "gpt2"
    tokens: list[str]                           # tokenizer.ggml.tokens
    types: list[int]                            # tokenizer.ggml.token_type
    scores: list[float] | None = None           # tokenizer.ggml.scores
    merges: list[str] | None = None             # tokenizer.ggml.merges
    pre: str | None = None                      # tokenizer.ggml.pre
    bos: int | None = 1
    eos: int | None = 2
    unk: int | None = 0
    add_bos: bool | None = None                 # tokenizer.ggml.add_bos_token (None: key absent)
    add_eos: bool | None = None
    add_space_prefix: bool | None = None        # tokenizer.ggml.add_space_prefix
    chat_template: str | None = None
    name: str = "edgerun tiny tokenizer"

    def replace(self, **changes: Any) -> "TokenizerSpec":
        return dataclasses.replace(self, **changes)


def _lines() -> list[str]:
    return [line for line in (DATA / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def _llama_layout(pieces: Sequence[str], chars: Sequence[str], *, extra_control: Sequence[str] = CHAT_CONTROL,
                  user_defined: Sequence[str] = (USER_TOKEN,)) -> TokenizerSpec:
    """Llama 2's layout: 0 <unk>, 1 <s>, 2 </s>, 3..258 bytes, pieces (score -rank), characters, then
    the added control and user-defined tokens (score 0)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    for p in list(pieces) + [c for c in chars]:
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(NORMAL)
        scores.append(-float(len(scores) - 259))
    for t in extra_control:
        tokens.append(t), types.append(CONTROL), scores.append(0.0)
    for t in user_defined:
        tokens.append(t), types.append(USER_DEFINED), scores.append(0.0)
    return TokenizerSpec(model="llama", tokens=tokens, types=types, scores=scores)


def spm_from_tokenizers(vocab_size: int = 600) -> TokenizerSpec:
    """A Llama-like SentencePiece vocabulary whose pieces ``tokenizers``' BPE trainer learned (words are
    ``▁``-prefixed as SentencePiece splits them); runs of spaces and tabs are pieces too, as in Llama's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    tok.train_from_iterator(_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    pieces = []
    for m in merges:
        a, b = m.split(" ", 1)
        pieces.append(a + b)
    pieces[5:5] = [SPACE * 2, SPACE * 4, "\t\t", SPACE * 3]   # early, like Llama's whitespace runs
    chars = sorted({c for line in _lines() for c in SPACE + line.replace(" ", SPACE)}) + ["\t", "\n"]
    return _llama_layout(pieces, chars)


#: what Gemma's GGUFs add to a SentencePiece vocabulary: user-defined runs of newlines, spaces and tabs
#: (llama.cpp's converter writes their ``▁`` back as spaces) and HTML tags, and turn control tokens
GEMMA_USER_DEFINED = ("\n\n", "  ", "   ", "    ", "\t\t\t", "<h1>", "</h1>")
GEMMA_CONTROL = ("<start_of_turn>", "<end_of_turn>")


def gemma_like(spec: TokenizerSpec) -> TokenizerSpec:
    """``spec`` as Gemma's tokenizer is: no space prefix, Gemma's user-defined and turn tokens added."""
    extra = list(GEMMA_USER_DEFINED) + list(GEMMA_CONTROL)
    return spec.replace(tokens=spec.tokens + extra, scores=spec.scores + [0.0] * len(extra),
                        types=spec.types + [USER_DEFINED] * len(GEMMA_USER_DEFINED) + [CONTROL] * len(GEMMA_CONTROL),
                        add_space_prefix=False, add_bos=True)


def spm_from_sentencepiece(vocab_size: int = 500, workdir: Path | None = None, corpus: Path | None = None,
                           coverage: float = 1.0) -> TokenizerSpec | None:
    """The same trained by the ``sentencepiece`` library (BPE with byte fallback, identity normalization,
    whitespace kept: as Llama's tokenizer.model is) on ``corpus`` (default export/llm/data/train.txt);
    ``None`` without the library."""
    try:
        import sentencepiece as spm
    except ImportError:
        return None
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        prefix = str(Path(tmp) / "m")
        spm.SentencePieceTrainer.train(
            input=str(corpus or DATA / "train.txt"), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, split_digits=True, character_coverage=coverage, allow_whitespace_only_pieces=True,
            control_symbols=list(CHAT_CONTROL), user_defined_symbols=[USER_TOKEN], minloglevel=2,
            max_sentence_length=100_000, input_sentence_size=200_000, shuffle_input_sentence=True)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, types, scores = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i)
                     else UNUSED if sp.is_unused(i) else USER_DEFINED if tokens[-1] == USER_TOKEN else NORMAL)
    spec = TokenizerSpec(model="llama", tokens=tokens, types=types, scores=scores)
    spec.sp = sp  # type: ignore[attr-defined]  (the processor, for comparing ids)
    return spec


def bpe_from_tokenizers(vocab_size: int = 512, *, pre: str | None = "gpt-2") -> TokenizerSpec:
    """A byte-level BPE (GPT-2's alphabet) with ChatML control tokens, as SmolLM's/Qwen's GGUFs carry."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_lines() + [MIXED], trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for t, i in model["vocab"].items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [CONTROL if t in specials else NORMAL for t in tokens]
    return TokenizerSpec(model="gpt2", tokens=tokens, types=types, merges=merges, pre=pre, bos=1, eos=2, unk=None)


def write_tokenizer_gguf(path: str | Path, spec: TokenizerSpec, *, seed: int = 0, dim: int = 32) -> Path:
    """A 1-layer Llama GGUF (random F32 weights, tied output) whose tokenizer is ``spec``."""
    import gguf

    path = Path(path)
    n, heads, kv_heads, ffn = len(spec.tokens), 4, 2, 2 * dim
    head_dim = dim // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(spec.name)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n)
    w.add_tokenizer_model(spec.model)
    if spec.pre is not None:
        w.add_tokenizer_pre(spec.pre)
    w.add_token_list(list(spec.tokens))
    w.add_token_types([int(t) for t in spec.types])
    if spec.scores is not None:
        w.add_token_scores([float(s) for s in spec.scores])
    if spec.merges is not None:
        w.add_token_merges(list(spec.merges))
    for value, add in ((spec.bos, w.add_bos_token_id), (spec.eos, w.add_eos_token_id), (spec.unk, w.add_unk_token_id)):
        if value is not None:
            add(int(value))
    for value, add in ((spec.add_bos, w.add_add_bos_token), (spec.add_eos, w.add_add_eos_token),
                       (spec.add_space_prefix, w.add_add_space_prefix)):
        if value is not None:
            add(bool(value))
    if spec.chat_template:
        w.add_chat_template(spec.chat_template)
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (0.2 * rng.standard_normal((rows, cols))).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n, dim))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    for name, shape in (("attn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (kv_heads * head_dim, dim)),
                        ("attn_v", (kv_heads * head_dim, dim)), ("attn_output", (dim, dim)), ("ffn_norm", (dim,)),
                        ("ffn_gate", (ffn, dim)), ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
        w.add_tensor(f"blk.0.{name}.weight", np.ones(shape, np.float32) if len(shape) == 1 else mat(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
