"""A GGUF of a supported LLM family -> an exportable PyTorch model with its KV cache as mutable buffers.

:func:`read_gguf` opens the file with llama.cpp's own reader (``gguf.GGUFReader``), looks its
``general.architecture`` up in :data:`.families.FAMILIES` (llama, qwen2, qwen3, gemma, gemma2, gemma3,
phi3; anything else is refused naming what is supported), reads the hyper-parameters into a
:class:`LlamaConfig` **and checks every one against the tensor table and the file size before anything
is built**: ``token_embd`` gives vocab x dim, ``attn_q`` heads x head size, ``attn_k`` the KV heads,
``ffn_down`` the FFN width ...; a missing tensor, a tensor of the wrong shape, a tensor the family does
not have, a non-integer or absurd value, or a model whose fp32 parameters could not have come from a file
of this size (a dequantization expands at most ``32 / min bits-per-weight`` times) is each refused with an
:class:`ExportError` naming the file, the key or tensor, the value and what was expected.
:func:`load_llama` then dequantizes every tensor (``gguf.quants.dequantize``: F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_x and the K-quants) into a :class:`Llama` whose KV cache is at most the model's context long.

One model definition, per-family parts (:mod:`.families`): the parameter names are the llama ones
(``tok_embeddings``, ``layers.N.attention_norm``, ``attention.wq/wk/wv/wo``, ``ffn_norm``,
``feed_forward.w1`` (gate) / ``w2`` (down) / ``w3`` (up), ``norm``, ``output``) for every family, plus
``attention.q_norm``/``k_norm`` (qwen3, gemma3), ``post_attention_norm``/``post_ffn_norm`` (gemma2/3) and
biases where the GGUF has them; phi3's fused ``attn_qkv`` and ``ffn_up`` are split at load into those.

Layout facts the model follows rather than converts:

* ``llama`` GGUFs store ``attn_q``/``attn_k`` permuted for llama.cpp's *interleaved* RoPE (pairs ``2i,
  2i+1``); the other families use NeoX RoPE (pairs ``i, i + rot/2``) on unpermuted weights. The model
  applies each as its family says, so a GGUF's weights are used as they are, and a model written by
  :func:`write_gguf` round-trips without any permutation.
* A GGUF without ``output.weight`` ties the LM head to ``token_embd`` (one parameter, counted once).
* Numpy shapes are GGUF's ``ne`` reversed, so a matrix is ``[out_features, in_features]`` as in torch.

The model: ``forward(tokens [1, T] int64, input_pos [T] int64[, cache_positions [N] int64]) -> logits
[1, T, vocab]``. It writes the new keys/values into ``k_cache`` (``[1, kv_heads, head_dim, max_context]``, keys
transposed) and ``v_cache`` (``[1, kv_heads, max_context, head_dim]``) with ``index_copy_`` at ``input_pos`` and
attends, under a causal mask built from ``input_pos`` (and, on sliding-window layers, a second mask that also
hides keys ``window`` or more positions back: the cache stays ``max_context`` long), over the cache's valid
prefix ``cache_positions`` (``0..input_pos[-1]``, what exported programs take: a step's attention costs what
the prefix holds, not ``max_context``) or, without it, over the whole cache. A prompt (prefill) and single
tokens (decode) are the same method with a dynamic ``T`` in ``1..max_context`` (and ``N``). ``forward_train(tokens)`` is the same
model without the cache. Only core ATen ops: no custom ops for the native runner to lack.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ExportError
from .families import FAMILIES, LINEARS, ROPE_NORM, Family, supported, swa_flags

STAGE = "load model"
#: the model's (and an exported program's) optional third input: the cache's valid prefix
CACHE_POSITIONS = "cache_positions"
ARCHITECTURE = "llama"      # the architecture of a LlamaConfig that names none

#: GGUF tensor names of one (unfused) block -> this module's parameter names
_BLOCK_TENSORS = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
}
#: GGUF names of a linear's bias (per block unless "output")
_BIAS_TENSORS = {"wq": "attn_q.bias", "wk": "attn_k.bias", "wv": "attn_v.bias", "wo": "attn_output.bias",
                 "w1": "ffn_gate.bias", "w2": "ffn_down.bias", "w3": "ffn_up.bias", "output": "output.bias"}

#: bounds a hyper-parameter must lie in before it is even compared with the tensors (absurd otherwise)
MAX_LAYERS = 1024
MAX_DIM = 1 << 17
MAX_VOCAB = 1 << 22
MAX_CONTEXT = 1 << 24


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The hyper-parameters of one model of any family (the name is the historic one). Fields after
    ``tied_embeddings`` default to plain Llama, so a Llama's config reads as it always did."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    context_length: int = 2048       # what the model was trained for (the export's max is separate)
    tied_embeddings: bool = True
    architecture: str = ARCHITECTURE  # a key of families.FAMILIES
    key_length: int = 0               # head size when it is not dim // n_heads (attention.key_length)
    rope_dim: int = 0                 # leading dims of a head RoPE rotates when not all (rope.dimension_count)
    rope_freq_scale: float = 1.0      # linear RoPE scaling (1 / rope.scaling.factor), as llama.cpp's freq_scale
    sliding_window: int = 0           # keys this many positions back or more are hidden on sliding layers
    sliding_layers: tuple = ()        # one bool a layer; empty with a window: every layer slides
    rope_theta_local: float = 0.0     # RoPE base of sliding layers when it differs from rope_theta
    rope_freq_scale_local: float = 0.0  # their linear RoPE scale when it differs from rope_freq_scale
    attn_softcap: float = 0.0         # scores -> cap * tanh(scores / cap) before the mask (0: none)
    final_softcap: float = 0.0        # logits -> cap * tanh(logits / cap) (0: none)
    attention_scale: float = 0.0      # queries are scaled by this (0: head_dim ** -0.5)
    biases: tuple = ()                # linears (families.LINEARS keys) that have a bias

    def __post_init__(self) -> None:
        for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "context_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("key_length", "rope_dim", "sliding_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.architecture not in FAMILIES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {', '.join(FAMILIES)}")
        if not self.key_length and self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.rot % 2 or self.rot > self.head_dim:
            raise ValueError(f"RoPE dims {self.rot} must be even and at most the head size {self.head_dim}")
        if self.sliding_layers and len(self.sliding_layers) != self.n_layers:
            raise ValueError(f"sliding_layers has {len(self.sliding_layers)} flags for {self.n_layers} layers")
        unknown = set(self.biases) - set(LINEARS)
        if unknown:
            raise ValueError(f"biases name unknown linears {sorted(unknown)}; known: {', '.join(LINEARS)}")

    @property
    def family(self) -> Family:
        return FAMILIES[self.architecture]

    @property
    def head_dim(self) -> int:
        return self.key_length or self.dim // self.n_heads

    @property
    def rot(self) -> int:
        """How many leading dims of each head RoPE rotates."""
        return self.rope_dim or self.head_dim

    @property
    def query_scale(self) -> float:
        return self.attention_scale or self.head_dim ** -0.5

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_window) and (not self.sliding_layers or bool(self.sliding_layers[layer]))

    def local_rope(self, layer: int) -> bool:
        """Whether ``layer`` uses the sliding layers' own RoPE base/scale."""
        return self.is_sliding(layer) and bool(self.rope_theta_local or self.rope_freq_scale_local)

    def keep_layers(self, n: int) -> "LlamaConfig":
        """This config cut to its first ``n`` blocks."""
        return dataclasses.replace(self, n_layers=n, sliding_layers=tuple(self.sliding_layers[:n]))

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """Keys and values of every layer for one position."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes

    def parameter_count(self) -> int:
        """Parameters of the model this config builds (a tied head counted once)."""
        hd, q, kv = self.head_dim, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        fam = self.family
        block = 2 * self.dim + self.dim * (q + 2 * kv) + q * self.dim + 3 * self.dim * self.ffn_dim
        block += 2 * hd if fam.qk_norm else 0
        block += 2 * self.dim if fam.post_norms else 0
        widths = {"wq": q, "wk": kv, "wv": kv, "wo": self.dim, "w1": self.ffn_dim, "w2": self.dim,
                  "w3": self.ffn_dim}
        block += sum(widths[b] for b in self.biases if b != "output")
        head = 0 if self.tied_embeddings else self.vocab_size * self.dim
        head += self.vocab_size if "output" in self.biases else 0
        return self.n_layers * block + self.vocab_size * self.dim + self.dim + head

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class GGUFFile:
    """An opened GGUF of a supported family: its config, metadata and (still quantized) tensors."""

    path: Path
    config: LlamaConfig
    name: str
    reader: Any                         # gguf.GGUFReader
    tensors: Mapping[str, Any]          # name -> gguf ReaderTensor
    rope_dim: int

    @property
    def family(self) -> Family:
        return self.config.family

    def field(self, key: str, default: Any = None) -> Any:
        return _field(self.reader, key, default)

    def tensor_types(self) -> dict[str, int]:
        """GGUF tensor type name -> number of tensors of that type (Q4_1: 210, F32: 61 ...)."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
        return out

    def weight_bytes(self) -> int:
        return int(sum(int(t.n_bytes) for t in self.tensors.values()))


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(f"{float(value):.7g}")


def _shape(t) -> tuple[int, ...]:
    """A ReaderTensor's shape in torch order (GGUF's ne reversed)."""
    return tuple(int(s) for s in reversed(list(t.shape)))


def _min_bits_per_weight() -> float:
    """The fewest bits a weight can take in any GGML type (IQ1_S: 1.5625): a dequantization to fp32 expands
    a tensor at most 32 / this times."""
    import gguf

    return min(8.0 * type_size / block for block, type_size in gguf.GGML_QUANT_SIZES.values() if type_size)


class _Meta:
    """Typed, bounded access to one GGUF's ``<arch>.*`` metadata; errors name the file and the key."""

    def __init__(self, path: Path, reader, arch: str):
        self.path, self.reader, self.arch = path, reader, arch

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def raw(self, name: str):
        f = self.reader.fields.get(self.key(name))
        if f is None:
            return None
        try:
            return f.contents()
        except Exception as exc:  # a value of a type contents() cannot decode
            raise ExportError(f"{self.path}: metadata {self.key(name)} cannot be read ({type(exc).__name__}).",
                              stage=STAGE) from None

    def int(self, name: str, default: int | None = None, *, lo: int = 1, hi: int = 1 << 31) -> int:
        v = self.raw(name)
        if v is None:
            if default is None:
                raise ExportError(f"{self.path}: the GGUF metadata lacks {self.key(name)}, which a {self.arch} model "
                                  "needs.", stage=STAGE,
                                  hint="The file is incomplete or was written by an unusual converter; convert the "
                                       "model again with llama.cpp's convert_hf_to_gguf.py.")
            return default
        if isinstance(v, list):
            raise ExportError(f"{self.path}: {self.key(name)} is a per-layer list ({len(v)} values); edgerun reads "
                              "one value for every layer.", stage=STAGE,
                              hint="Models with layers of different shapes are not supported.")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ExportError(f"{self.path}: {self.key(name)} = {v!r} is not an integer.", stage=STAGE)
        v = int(v)
        if not lo <= v <= hi:
            raise ExportError(f"{self.path}: {self.key(name)} = {v} is outside {lo}..{hi}; no model of this "
                              "family has that (an edited or damaged file?).", stage=STAGE)
        return v

    def float(self, name: str, default: float | None = None, *, positive: bool = True) -> float:
        v = self.raw(name)
        if v is None:
            if default is None:
                raise ExportError(f"{self.path}: the GGUF metadata lacks {self.key(name)}, which a {self.arch} model "
                                  "needs.", stage=STAGE, hint="The file is incomplete or was written by an unusual "
                                                              "converter.")
            return float(default)
        if isinstance(v, (list, str, bool)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ExportError(f"{self.path}: {self.key(name)} = {v!r} is not a number.", stage=STAGE)
        v = _f32(v)
        if not math.isfinite(v) or (positive and v <= 0):
            raise ExportError(f"{self.path}: {self.key(name)} = {v} must be a finite number"
                              f"{' > 0' if positive else ''}.", stage=STAGE)
        return v


def read_gguf(path: str | Path) -> GGUFFile:
    """Open ``path``, check it is a GGUF of a supported family whose metadata agrees with its tensors and
    its size; errors name the file and what was expected (see the module docstring). Reads metadata and
    the tensor table only: nothing is dequantized or allocated by the model's size."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"GGUF file {p} does not exist.", stage=STAGE)
    try:
        import gguf
    except ImportError as exc:  # a dependency of edgerun; only a broken install lacks it
        raise ExportError("the 'gguf' package is not installed.", stage=STAGE,
                          hint="Reinstall edgerun (pip install -e .) or run scripts/setup.") from exc
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ExportError(f"{p} is not a GGUF file: it starts with {magic!r}, expected b'GGUF'.", stage=STAGE,
                          hint="Give a .gguf file made by llama.cpp's convert/quantize tools.")
    try:
        reader = gguf.GGUFReader(str(p), "r")
    except Exception as exc:
        raise ExportError(f"{p} is not a readable GGUF file (truncated or damaged?): {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}.", stage=STAGE,
                          hint="Copy or download the file again; its size should match the original.") from exc
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or arch not in FAMILIES:
        raise ExportError(f"{p} is a GGUF of architecture {arch!r}; edgerun reads the architectures {supported()}.",
                          stage=STAGE, hint="Use a model of one of those families (its GGUF's "
                                            "general.architecture says which).")
    tensors = {t.name: t for t in reader.tensors}
    config = _read_config(p, reader, arch, tensors)
    _check_tensors(p, config, tensors)
    _check_size(p, config)
    name = str(_field(reader, "general.name", p.stem))
    return GGUFFile(path=p, config=config, name=name, reader=reader, tensors=tensors, rope_dim=config.rot)


def _read_config(p: Path, reader, arch: str, tensors: Mapping[str, Any]) -> LlamaConfig:
    fam = FAMILIES[arch]
    m = _Meta(p, reader, arch)
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ExportError(f"{p}: tensor token_embd.weight (the token embeddings, vocab x {arch}.embedding_length) "
                          "is missing.", stage=STAGE, hint="The file is incomplete; convert the model again.")
    emb_shape = _shape(emb)
    if len(emb_shape) != 2:
        raise ExportError(f"{p}: tensor token_embd.weight has shape {list(emb_shape)}; expected [vocab, "
                          f"{arch}.embedding_length].", stage=STAGE)
    n_layers = m.int("block_count", hi=MAX_LAYERS)
    dim = m.int("embedding_length", hi=MAX_DIM)
    if emb_shape[1] != dim:
        raise ExportError(f"{p}: {arch}.embedding_length = {dim}, but tensor token_embd.weight is "
                          f"{list(emb_shape)} (vocab x width {emb_shape[1]}).", stage=STAGE,
                          hint="The metadata was edited or the file is damaged; the tensors are what the model is.")
    vocab = emb_shape[0]
    if not 1 <= vocab <= MAX_VOCAB:
        raise ExportError(f"{p}: token_embd.weight has {vocab} rows; expected a vocabulary of 1..{MAX_VOCAB}.",
                          stage=STAGE)
    declared = m.raw("vocab_size")
    if declared is not None and m.int("vocab_size", hi=MAX_VOCAB) != vocab:
        raise ExportError(f"{p}: {arch}.vocab_size = {declared}, but tensor token_embd.weight has {vocab} rows "
                          f"({list(emb_shape)}).", stage=STAGE, hint="The metadata was edited or the file is damaged.")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.data) != vocab:
        raise ExportError(f"{p}: tokenizer.ggml.tokens lists {len(tokens.data)} tokens, but tensor token_embd.weight "
                          f"has {vocab} rows; llama.cpp needs them equal.", stage=STAGE)
    n_heads = m.int("attention.head_count", hi=MAX_DIM)
    n_kv = m.int("attention.head_count_kv", n_heads, hi=n_heads)
    if n_heads % n_kv:
        raise ExportError(f"{p}: {arch}.attention.head_count = {n_heads} is not a multiple of "
                          f"{arch}.attention.head_count_kv = {n_kv}.", stage=STAGE)
    plain = dim // n_heads if dim % n_heads == 0 else 0
    key_len = m.int("attention.key_length", plain or None, hi=MAX_DIM)
    val_len = m.int("attention.value_length", key_len, hi=MAX_DIM)
    if val_len != key_len:
        raise ExportError(f"{p}: {arch}.attention.value_length = {val_len} differs from attention.key_length = "
                          f"{key_len}; edgerun's attention has one head size.", stage=STAGE)
    rot = m.int("rope.dimension_count", key_len, hi=MAX_DIM)
    if rot > key_len or rot % 2:
        raise ExportError(f"{p}: {arch}.rope.dimension_count = {rot}; expected an even number of at most the head "
                          f"size {key_len}.", stage=STAGE)
    if fam.rope_must_cover_head and rot != key_len:
        raise ExportError(f"{p}: {arch}.rope.dimension_count = {rot}, but a {arch} model rotates whole heads of "
                          f"{key_len} dims (llama.cpp refuses this too).", stage=STAGE)
    ffn = m.int("feed_forward_length", hi=1 << 22)
    context = m.int("context_length", 2048, hi=MAX_CONTEXT)
    scaling = m.raw("rope.scaling.type")
    factor = m.float("rope.scaling.factor", 1.0) if m.raw("rope.scaling.factor") is not None else 1.0
    if scaling not in (None, "none", "linear"):
        raise ExportError(f"{p}: {arch}.rope.scaling.type = {scaling!r}; edgerun applies linear RoPE scaling only.",
                          stage=STAGE, hint="Use a GGUF of the model without long-context RoPE scaling.")
    freq_scale = 1.0 if scaling == "none" else 1.0 / factor
    theta = m.float("rope.freq_base", 10000.0)

    window, flags, theta_local, scale_local = 0, (), 0.0, 0.0
    if fam.window == "all":
        window = m.int("attention.sliding_window", 0, lo=0)
    elif fam.window == "pattern":
        window = m.int("attention.sliding_window", fam.default_window, lo=0)
        if window:
            pattern = m.raw("attention.sliding_window_pattern")
            if isinstance(pattern, list):
                if len(pattern) != n_layers or not all(isinstance(x, (bool, np.bool_)) for x in pattern):
                    raise ExportError(f"{p}: {arch}.attention.sliding_window_pattern lists {len(pattern)} values; "
                                      f"expected one true/false a layer ({n_layers}).", stage=STAGE)
                flags = tuple(bool(x) for x in pattern)
            else:
                flags = swa_flags(n_layers, m.int("attention.sliding_window_pattern", fam.default_pattern, lo=0,
                                                  hi=MAX_LAYERS))
            base_local = fam.local_rope_base if fam.local_rope_base is not None else theta
            base_local = m.float("rope.freq_base_swa", base_local)
            theta_local = 0.0 if base_local == theta else base_local
            local_scale = freq_scale if fam.local_rope_scaled else 1.0
            scale_local = 0.0 if local_scale == freq_scale else local_scale
            if all(flags):
                flags = ()
            elif not any(flags):
                window, flags, theta_local, scale_local = 0, (), 0.0, 0.0
    attn_cap = m.float("attn_logit_softcapping", fam.attn_softcap) if fam.attn_softcap is not None else 0.0
    final_cap = 0.0
    if fam.final_softcap is not None:
        final_cap = m.float("final_logit_softcapping", fam.final_softcap, positive=False)
        if final_cap < 0:
            raise ExportError(f"{p}: {arch}.final_logit_softcapping = {final_cap} must be >= 0.", stage=STAGE)
    scale = 0.0
    if fam.wide_query_scale_layers and n_layers == fam.wide_query_scale_layers:
        scale = (dim // n_heads) ** -0.5   # llama.cpp's "27B" rule (query_pre_attn_scalar = dim / heads)

    biases = sorted(b for b in fam.biases if _has_bias(tensors, b))
    for b in biases:
        if b != "output":
            present = [i for i in range(n_layers) if f"blk.{i}.{_bias_name(fam, b, tensors, i)}" in tensors]
            if len(present) != n_layers:
                raise ExportError(f"{p}: {len(present)} of {n_layers} layers have a bias for {LINEARS[b]} "
                                  f"({_bias_name(fam, b, tensors, 0)}); edgerun needs all or none.", stage=STAGE)
    tied = "output.weight" not in tensors
    if fam.head_always_tied and not tied:
        raise ExportError(f"{p}: a {arch} model's LM head is token_embd.weight, but this file also has "
                          "output.weight, which llama.cpp does not read (and refuses).", stage=STAGE,
                          hint="Convert the model again with llama.cpp's convert_hf_to_gguf.py.")
    try:
        return LlamaConfig(
            n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv, ffn_dim=ffn, vocab_size=vocab,
            rope_theta=theta, norm_eps=m.float("attention.layer_norm_rms_epsilon"), context_length=context,
            tied_embeddings=tied, architecture=arch, key_length=0 if key_len == plain else key_len,
            rope_dim=0 if rot == key_len else rot, rope_freq_scale=freq_scale, sliding_window=window,
            sliding_layers=flags, rope_theta_local=theta_local, rope_freq_scale_local=scale_local,
            attn_softcap=attn_cap, final_softcap=final_cap, attention_scale=scale, biases=tuple(biases))
    except ValueError as exc:
        raise ExportError(f"{p}: inconsistent {arch} hyper-parameters: {exc}.", stage=STAGE) from None


def _has_bias(tensors: Mapping[str, Any], short: str) -> bool:
    if short == "output":
        return "output.bias" in tensors
    if short in ("wq", "wk", "wv") and "blk.0.attn_qkv.bias" in tensors:
        return True
    return f"blk.0.{_BIAS_TENSORS[short]}" in tensors


def _bias_name(fam: Family, short: str, tensors: Mapping[str, Any], layer: int) -> str:
    if short in ("wq", "wk", "wv") and fam.fused_qkv and f"blk.{layer}.attn_qkv.bias" in tensors:
        return "attn_qkv.bias"
    return _BIAS_TENSORS[short]


@dataclasses.dataclass(frozen=True)
class _Source:
    """One GGUF tensor and the parameters it fills: ``(parameter name, first row, rows)`` each."""

    gguf: str
    shape: tuple[int, ...]
    targets: tuple[tuple[str, int, int], ...]
    why: str                            # which hyper-parameters imply the shape


def _sources(cfg: LlamaConfig, tensors: Mapping[str, Any]) -> list[_Source]:
    """Every tensor the model reads, with the shape its config implies (the inverse map of :func:`write_gguf`)."""
    fam, a = cfg.family, cfg.architecture
    d, hd, ffn = cfg.dim, cfg.head_dim, cfg.ffn_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    heads = f"{a}.attention.head_count x head size {hd}"
    kvs = f"{a}.attention.head_count_kv x head size {hd}"
    out = [_Source("token_embd.weight", (cfg.vocab_size, d), (("tok_embeddings.weight", 0, cfg.vocab_size),),
                   "vocab x embedding_length"),
           _Source("output_norm.weight", (d,), (("norm.weight", 0, d),), "embedding_length")]
    if not cfg.tied_embeddings:
        out.append(_Source("output.weight", (cfg.vocab_size, d), (("output.weight", 0, cfg.vocab_size),),
                           "vocab x embedding_length"))
    if "output" in cfg.biases:
        out.append(_Source("output.bias", (cfg.vocab_size,), (("output.bias", 0, cfg.vocab_size),), "vocab"))
    for i in range(cfg.n_layers):
        blk, par = f"blk.{i}.", f"layers.{i}."

        def src(name, shape, param, why):
            out.append(_Source(blk + name, shape, ((par + param, 0, shape[0]),), why))

        src("attn_norm.weight", (d,), "attention_norm.weight", "embedding_length")
        fused = fam.fused_qkv and blk + "attn_qkv.weight" in tensors
        if fused:
            out.append(_Source(blk + "attn_qkv.weight", (q + 2 * kv, d),
                               ((par + "attention.wq.weight", 0, q), (par + "attention.wk.weight", q, kv),
                                (par + "attention.wv.weight", q + kv, kv)), f"({heads}) + 2 x ({kvs})"))
        else:
            src("attn_q.weight", (q, d), "attention.wq.weight", heads)
            src("attn_k.weight", (kv, d), "attention.wk.weight", kvs)
            src("attn_v.weight", (kv, d), "attention.wv.weight", kvs)
        for b, width in (("wq", q), ("wk", kv), ("wv", kv)):
            if b in cfg.biases and _bias_name(fam, b, tensors, i) == "attn_qkv.bias":
                if b == "wq":
                    out.append(_Source(blk + "attn_qkv.bias", (q + 2 * kv,),
                                       ((par + "attention.wq.bias", 0, q), (par + "attention.wk.bias", q, kv),
                                        (par + "attention.wv.bias", q + kv, kv)), f"({heads}) + 2 x ({kvs})"))
            elif b in cfg.biases:
                src(_BIAS_TENSORS[b], (width,), f"{LINEARS[b]}.bias", heads if b == "wq" else kvs)
        src("attn_output.weight", (d, q), "attention.wo.weight", f"embedding_length x ({heads})")
        if "wo" in cfg.biases:
            src("attn_output.bias", (d,), "attention.wo.bias", "embedding_length")
        if fam.qk_norm:
            src("attn_q_norm.weight", (hd,), "attention.q_norm.weight", "head size")
            src("attn_k_norm.weight", (hd,), "attention.k_norm.weight", "head size")
        if fam.post_norms:
            src("post_attention_norm.weight", (d,), "post_attention_norm.weight", "embedding_length")
            src("post_ffw_norm.weight", (d,), "post_ffn_norm.weight", "embedding_length")
        src("ffn_norm.weight", (d,), "ffn_norm.weight", "embedding_length")
        if fam.fused_gate_up:
            out.append(_Source(blk + "ffn_up.weight", (2 * ffn, d),
                               ((par + "feed_forward.w1.weight", 0, ffn), (par + "feed_forward.w3.weight", ffn, ffn)),
                               f"2 x {a}.feed_forward_length (gate and up) x embedding_length"))
        else:
            src("ffn_gate.weight", (ffn, d), "feed_forward.w1.weight", "feed_forward_length x embedding_length")
            src("ffn_up.weight", (ffn, d), "feed_forward.w3.weight", "feed_forward_length x embedding_length")
        src("ffn_down.weight", (d, ffn), "feed_forward.w2.weight", "embedding_length x feed_forward_length")
        for b, width in (("w1", ffn), ("w3", ffn), ("w2", d)):
            if b in cfg.biases:
                src(_BIAS_TENSORS[b], (width,), f"{LINEARS[b]}.bias", "feed_forward_length" if b != "w2"
                    else "embedding_length")
    return out


def _optional_tensors(cfg: LlamaConfig) -> set[str]:
    """Tensors a GGUF of this family may have that are read apart from :func:`_sources`."""
    return {"rope_freqs.weight"} if cfg.family.rope_freqs else set()


def _check_tensors(p: Path, cfg: LlamaConfig, tensors: Mapping[str, Any]) -> None:
    """Every tensor the config implies exists with that shape; no tensor is left that the family lacks."""
    sources = _sources(cfg, tensors)
    missing = [s for s in sources if s.gguf not in tensors]
    if missing:
        s = missing[0]
        raise ExportError(f"{p}: {len(missing)} tensor(s) a {cfg.n_layers}-layer {cfg.architecture} model needs are "
                          f"missing, first {s.gguf} (expected shape {list(s.shape)}: {s.why})"
                          f"{'; also ' + ', '.join(m.gguf for m in missing[1:4]) if len(missing) > 1 else ''}.",
                          stage=STAGE, hint="The file is incomplete or its metadata (block_count ...) was edited.")
    for s in sources:
        got = _shape(tensors[s.gguf])
        if got != s.shape:
            raise ExportError(f"{p}: tensor {s.gguf} has shape {list(got)}; the metadata implies {list(s.shape)} "
                              f"({s.why}).", stage=STAGE,
                              hint="The metadata was edited or the file is damaged; the tensors are what the model is.")
    known = {s.gguf for s in sources} | _optional_tensors(cfg)
    extra = sorted(set(tensors) - known)
    longrope = [n for n in extra if n.startswith("rope_factors_")]
    if longrope:
        raise ExportError(f"{p}: tensor {longrope[0]} holds LongRoPE factors (long-context Phi-3 variants); edgerun "
                          "applies plain and linearly scaled RoPE only.", stage=STAGE,
                          hint="Use the model's short-context variant (Phi-3-mini-4k rather than -128k).")
    if extra:
        raise ExportError(f"{p}: tensor {extra[0]}{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''} is "
                          f"not part of a {cfg.architecture} model as llama.cpp reads it, so edgerun does not know "
                          f"what it does.", stage=STAGE,
                          hint=f"edgerun reads {supported()}; a file with other tensors is another model.")
    if "rope_freqs.weight" in tensors and _shape(tensors["rope_freqs.weight"]) != (cfg.rot // 2,):
        raise ExportError(f"{p}: tensor rope_freqs.weight has shape {list(_shape(tensors['rope_freqs.weight']))}; "
                          f"expected [{cfg.rot // 2}] (half the RoPE dims).", stage=STAGE)


def _check_size(p: Path, cfg: LlamaConfig) -> None:
    """The fp32 model must be one a file of this size can hold: at most 32 / (fewest bits a weight) times it."""
    size = p.stat().st_size
    params = cfg.parameter_count()
    limit = size * 32.0 / _min_bits_per_weight()
    if params * 4 > limit:
        raise ExportError(f"{p}: the metadata describes {params:,} parameters ({params * 4 / 2**30:.1f} GiB in "
                          f"fp32), more than a {size:,}-byte file can hold even at the smallest GGML type "
                          f"({limit / 2**30:.2f} GiB after dequantization).", stage=STAGE,
                          hint="The metadata was edited or the file is truncated.")


def dequantized(g: GGUFFile, name: str) -> np.ndarray:
    """Tensor ``name`` as float32, in torch's shape (GGUF's ``ne`` reversed)."""
    import gguf

    t = g.tensors[name]
    shape = _shape(t)
    try:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as exc:
        raise ExportError(f"{g.path}: tensor {name} is of type {t.tensor_type.name}, which the gguf package "
                          f"cannot dequantize ({exc}).", stage=STAGE,
                          hint="Re-quantize the model to F16, Q8_0, Q4_0, Q4_1 or a K-quant (Q4_K, Q6_K ...).") \
            from None
    except Exception as exc:  # a tensor cut short by a truncated file
        raise ExportError(f"{g.path}: tensor {name} ({t.tensor_type.name}) cannot be read: {type(exc).__name__}: "
                          f"{exc}.", stage=STAGE, hint="The file may be truncated; copy it again.") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.size != math.prod(shape):
        raise ExportError(f"{g.path}: tensor {name} holds {arr.size} values, its shape {list(shape)} needs "
                          f"{math.prod(shape)} (truncated file?).", stage=STAGE)
    return arr.reshape(shape)


#: GGML's Q4_0 block: an f16 scale d, then 32 4-bit codes q (two a byte: element j in the low nibble of
#: byte j, element j + 16 in the high one); the value is d * (q - 8)
Q4_0_BLOCK = 32


def q4_0_codes(g: GGUFFile, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 tensor's own codes and scales, nothing rounded: ``(codes int8 [rows, cols] in -8..7 (q - 8),
    scales float32 [rows, cols / 32])`` (the f16 scales widened exactly), so ``codes * scales`` repeated per
    block of 32 is :func:`dequantized` bit for bit."""
    import gguf

    t = g.tensors[name]
    if t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
        raise ValueError(f"{name} is {t.tensor_type.name}, not Q4_0")
    rows, cols = _shape(t)
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, cols // Q4_0_BLOCK, 2 + Q4_0_BLOCK // 2)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    return codes.reshape(rows, cols), scales


def load_llama(path: str | Path, *, max_context: int = 128, layers: int | None = None):
    """Read ``path`` (any supported family) into an eval-mode :class:`Llama` (fp32); ``layers`` keeps only
    the first N blocks (a fast stand-in of a big model for tests). ``max_context`` (the KV cache's length)
    is at most the context the model was trained for. Returns ``(model, GGUFFile)``."""
    import torch

    g = read_gguf(path)
    cfg = g.config
    if layers is not None:
        if not isinstance(layers, int) or not 1 <= layers <= cfg.n_layers:
            raise ExportError(f"{g.path} has {cfg.n_layers} layers; cannot keep {layers}.", stage=STAGE)
        cfg = cfg.keep_layers(layers)
    if isinstance(max_context, bool) or not isinstance(max_context, int) or not 2 <= max_context <= cfg.context_length:
        raise ExportError(f"{g.path}: max context {max_context!r} is outside 2..{cfg.context_length}, the context "
                          f"the model was trained for ({cfg.architecture}.context_length).", stage=STAGE,
                          hint=f"Give a max context (--max-context) of at most {cfg.context_length}.")
    keep = {f"layers.{i}." for i in range(cfg.n_layers)}
    sources = [s for s in _sources(g.config, g.tensors)
               if not s.targets[0][0].startswith("layers.") or any(s.targets[0][0].startswith(k) for k in keep)]
    model = Llama(cfg, max_context=max_context)
    own = model.state_dict()
    with torch.no_grad():
        for s in sources:
            arr = dequantized(g, s.gguf)
            for param, start, rows in s.targets:
                part = arr[start:start + rows]
                if tuple(own[param].shape) != part.shape:  # _check_tensors makes this unreachable; kept as a guard
                    raise ExportError(f"{g.path}: tensor {s.gguf} gives {param} shape {list(part.shape)}, the config "
                                      f"implies {list(own[param].shape)}.", stage=STAGE)
                own[param].copy_(torch.from_numpy(np.require(part, requirements="WC")))
    if "rope_freqs.weight" in g.tensors:  # Llama-3 style per-frequency scaling factors
        factors = torch.from_numpy(dequantized(g, "rope_freqs.weight").reshape(-1))
        model.set_rope_factors(factors)
    # where each weight came from (file, tensor, first row, rows, GGML type), so a recipe can take a 4-bit
    # GGUF's own codes instead of rounding its dequantized values again (quantize.py, Q4_0)
    model.gguf_origin = (str(g.path), {param: (s.gguf, start, rows, g.tensors[s.gguf].tensor_type.name)
                                       for s in sources for param, start, rows in s.targets})
    return model.eval().requires_grad_(False), g


# ------------------------------------------------------------------------------------- model
def _torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        """``x / rms(x) * weight``, the weight as the GGUF stores it (Gemma's 1 + w included, see families)."""

        def __init__(self, dim: int, eps: float):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            # The mean over the last dim, taken as the mean over the two innermost dims of a 4-D view
            # ([1, rows, dim, 1]): the same sum in eager, and the form XNNPACK delegates (global average
            # pooling), so a norm does not cut the layer's delegate partition in two around a portable mean.
            ms = x.pow(2).reshape(1, -1, x.shape[-1], 1).mean((2, 3), keepdim=True).reshape(_static(x.shape[:-1]) + [1])
            return x * torch.rsqrt(ms + self.eps) * self.weight

    def _static(shape) -> list:
        """``shape`` with its first symbolic size (a prompt's length under export) written -1: XNNPACK delegates
        a reshape whose sizes are integers with at most one -1, and leaves one with a symbolic size to a
        portable copy between two delegate partitions."""
        out, free = [], True
        for d in shape:
            if free and not isinstance(d, int):
                out.append(-1)
                free = False
            else:
                out.append(d)
        return out

    def rope_tables(angles, head_dim: int, interleaved: bool):
        """cos/sin tables [positions, head_dim] for :func:`rope`: each angle's cos/sin on both dims of its pair
        (pairs 2i, 2i+1 for llama.cpp's NORM RoPE, i and i + rot/2 for NEOX), 1 and 0 on the dims past
        ``rot`` (partial rotary) so they pass through."""
        n, half = angles.shape
        rot = 2 * half
        cos, sin = angles.cos(), angles.sin()
        if interleaved:
            cos, sin = cos.repeat_interleave(2, dim=1), sin.repeat_interleave(2, dim=1)
        else:
            cos, sin = torch.cat((cos, cos), dim=1), torch.cat((sin, sin), dim=1)
        rest = head_dim - rot
        cos = torch.cat((cos, torch.ones(n, rest, dtype=cos.dtype)), dim=1)
        sin = torch.cat((sin, torch.zeros(n, rest, dtype=sin.dtype)), dim=1)
        return cos.float(), sin.float()

    def rope_rotation(head_dim: int, rot: int, interleaved: bool):
        """The [head_dim, head_dim] matrix R with ``x @ R`` = each rotated pair (a, b) -> (-b, a) in the pair
        layout of :func:`rope_tables`, zero past ``rot``."""
        r = torch.zeros(head_dim, head_dim)
        half = rot // 2
        for i in range(half):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            r[b, a], r[a, b] = -1.0, 1.0
        return r

    def rope(x, cos, sin, rotation):
        """RoPE on ``x`` [B, T, H, D] with tables ``cos``/``sin`` [1, T, 1, D] from :func:`rope_tables` and
        ``rotation`` [1, D, D] from :func:`rope_rotation`:
        ``x * cos + (x @ R) * sin``. Bit for bit the pairwise formula (R has one +-1 a column, so each
        element of ``x @ R`` is exactly +-x of its partner), written as a matmul and elementwise ops that
        XNNPACK delegates, where selecting and stacking pairs ran as portable copies between partitions."""
        b, _, h, d = x.shape
        turned = torch.bmm(x.reshape(1, -1, d), rotation).reshape(b, -1, h, d)
        return x * cos + turned * sin

    def softcap(x, cap: float):
        return torch.tanh(x / cap) * cap

    class Attention(nn.Module):
        def __init__(self, cfg: LlamaConfig, max_context: int):
            super().__init__()
            fam = cfg.family
            self.n_heads, self.n_kv, self.head_dim, self.rot = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rot
            self.scale, self.softcap = cfg.query_scale, cfg.attn_softcap
            self.register_buffer("rope_rotation", rope_rotation(cfg.head_dim, cfg.rot, fam.rope == ROPE_NORM)[None],
                                 persistent=False)
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias="wq" in cfg.biases)
            self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias="wk" in cfg.biases)
            self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias="wv" in cfg.biases)
            self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias="wo" in cfg.biases)
            self.qk_norm = fam.qk_norm
            if fam.qk_norm:
                self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
                self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            # persistent: torch.export lifts them as buffers and records their mutation. Keys are stored
            # transposed ([1, kv, head_dim, max_context]) so attention multiplies by the cache as it lies:
            # no per-step transposed copy of every key (see forward).
            self.register_buffer("k_cache", torch.zeros(1, cfg.n_kv_heads, cfg.head_dim, max_context))
            self.register_buffer("v_cache", torch.zeros(1, cfg.n_kv_heads, max_context, cfg.head_dim))

        def forward(self, x, input_pos, cos, sin, mask, cache: bool = True):
            b = x.shape[0]
            # Every reshape below gives integer sizes and at most one -1 (the prompt's length T), never a
            # symbolic size: XNNPACK delegates those, so a layer is not cut into partitions around copies.
            q = self.wq(x).view(b, -1, self.n_heads, self.head_dim)
            k = self.wk(x).view(b, -1, self.n_kv, self.head_dim)
            v = self.wv(x).view(b, -1, self.n_kv, self.head_dim)
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = rope(q, cos, sin, self.rope_rotation), rope(k, cos, sin, self.rope_rotation)
            # Grouped-query attention without copying the cache per query head: the query heads that
            # share a KV head are stacked along the rows ([b, kv, rep*t, d]), so each KV head is read once.
            qg = q.transpose(1, 2).reshape(b, self.n_kv, -1, self.head_dim)
            if cache:
                # The cache is one sequence (batch 1). The new keys/values are written in place at input_pos
                # (the export re-inplaces the index_put), and both products are batched matmuls over the
                # cache as it lies ([kv, rows, d] x [kv, d, keys], [kv, rows, keys] x [kv, keys, d]): nothing
                # of it is transposed or broadcast per step, and only its valid prefix is read.
                self.k_cache.index_copy_(3, input_pos, k.permute(0, 2, 3, 1))
                self.v_cache.index_copy_(2, input_pos, v.transpose(1, 2))
                length = mask.shape[-1]   # the keys this step may see: the whole cache, or its valid prefix
                if isinstance(length, int) and length == self.k_cache.shape[3]:
                    keys_t, values = self.k_cache, self.v_cache
                else:
                    # attention over the valid prefix (forward's cache_positions): the first `length`
                    # positions, copied out of the cache (a copy as long as the prefix, where reading the
                    # whole cache costs max_context); slice_copy, as a view of a transposed key cache would
                    # only be contiguous at full length and make the export guard on it
                    keys_t = torch.ops.aten.slice_copy.Tensor(self.k_cache, 3, 0, length)
                    values = torch.ops.aten.slice_copy.Tensor(self.v_cache, 2, 0, length)
                # -1 for the prefix's length, never its symbolic size, and the scores stay [kv, rows, keys]
                # (no reshape with two unknown sizes): XNNPACK delegates such reshapes, so the layer is not
                # cut into more partitions around them
                keys_t = keys_t.reshape(self.n_kv, self.head_dim, -1)
                values = values.reshape(self.n_kv, -1, self.head_dim)
                scores = torch.bmm(qg.reshape(self.n_kv, -1, self.head_dim), keys_t) * self.scale
            else:  # training: the sequence attends to itself, no cache
                keys, values = k.transpose(1, 2), v.transpose(1, 2)
                scores = torch.matmul(qg, keys.transpose(2, 3)) * self.scale
            if self.softcap:
                scores = softcap(scores, self.softcap)
            probs = torch.softmax(scores + mask, dim=-1)          # mask: additive, [rep*t, keys]
            if cache:
                out = torch.bmm(probs, values)                     # [kv, rep*t, d]
            else:
                out = torch.matmul(probs, values)                  # [b, kv, rep*t, d]
            out = out.reshape(b, self.n_heads, -1, self.head_dim).transpose(1, 2)
            return self.wo(out.reshape(b, -1, self.n_heads * self.head_dim))

    class FeedForward(nn.Module):
        def __init__(self, cfg: LlamaConfig):
            super().__init__()
            dim, hidden = cfg.dim, cfg.ffn_dim
            self.w1 = nn.Linear(dim, hidden, bias="w1" in cfg.biases)   # gate
            self.w2 = nn.Linear(hidden, dim, bias="w2" in cfg.biases)   # down
            self.w3 = nn.Linear(dim, hidden, bias="w3" in cfg.biases)   # up
            self.gelu = cfg.family.activation == "gelu_tanh"

        def forward(self, x):
            gate = self.w1(x)
            gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
            return self.w2(gate * self.w3(x))

    class Block(nn.Module):
        def __init__(self, cfg: LlamaConfig, max_context: int, layer: int):
            super().__init__()
            self.sliding, self.local_rope = cfg.is_sliding(layer), cfg.local_rope(layer)
            self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.attention = Attention(cfg, max_context)
            self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.feed_forward = FeedForward(cfg)
            self.post_norms = cfg.family.post_norms
            if self.post_norms:
                self.post_attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
                self.post_ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

        def forward(self, x, input_pos, cos, sin, mask, cache: bool = True):
            a = self.attention(self.attention_norm(x), input_pos, cos, sin, mask, cache)
            h = x + (self.post_attention_norm(a) if self.post_norms else a)
            f = self.feed_forward(self.ffn_norm(h))
            return h + (self.post_ffn_norm(f) if self.post_norms else f)

    class Llama(nn.Module):
        """See the module docstring. ``max_context`` fixes the KV cache's length."""

        def __init__(self, cfg: LlamaConfig, max_context: int = 128):
            super().__init__()
            if not isinstance(max_context, int) or max_context < 2:
                raise ValueError(f"max_context must be an integer >= 2, got {max_context!r}")
            self.config = cfg
            self.max_context = max_context
            self.embed_scale = math.sqrt(cfg.dim) if cfg.family.embed_scale else 0.0
            self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
            self.layers = nn.ModuleList(Block(cfg, max_context, i) for i in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias="output" in cfg.biases)
            if cfg.tied_embeddings:
                self.output.weight = self.tok_embeddings.weight
            self.register_buffer("positions", torch.arange(max_context), persistent=False)
            self.set_rope_factors(None)

        def _angles(self, theta: float, freq_scale: float, factors):
            half = self.config.rot // 2
            freqs = 1.0 / (theta ** (torch.arange(half, dtype=torch.float64) * 2 / (2 * half)))
            if factors is not None:
                freqs = freqs / factors.to(torch.float64)
            return torch.outer(torch.arange(self.max_context, dtype=torch.float64) * freq_scale, freqs)

        def set_rope_factors(self, factors) -> None:
            cfg = self.config
            interleaved = cfg.family.rope == ROPE_NORM
            cos, sin = rope_tables(self._angles(cfg.rope_theta, cfg.rope_freq_scale, factors), cfg.head_dim, interleaved)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            if any(layer.local_rope for layer in self.layers):  # sliding layers with their own base/scale
                local = self._angles(cfg.rope_theta_local or cfg.rope_theta,
                                     cfg.rope_freq_scale_local or cfg.rope_freq_scale, factors)
                cos, sin = rope_tables(local, cfg.head_dim, interleaved)
                self.register_buffer("rope_cos_local", cos, persistent=False)
                self.register_buffer("rope_sin_local", sin, persistent=False)

        def reset_cache(self) -> None:
            for layer in self.layers:
                layer.attention.k_cache.zero_()
                layer.attention.v_cache.zero_()

        def _masks(self, q_pos, k_pos):
            """Additive masks [rep*T, K]: causal, and causal within the window (None without sliding layers);
            repeated for the query heads that share a KV head."""
            cfg = self.config
            rep = cfg.n_heads // cfg.n_kv_heads
            allowed = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
            causal = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
            window = None
            if any(layer.sliding for layer in self.layers):
                near = allowed & (q_pos.unsqueeze(1) - k_pos.unsqueeze(0) < cfg.sliding_window)
                window = torch.zeros(near.shape, dtype=torch.float32).masked_fill(~near, float("-inf"))
                window = window.repeat(rep, 1)
            return causal.repeat(rep, 1), window

        def _run(self, tokens, pos, cos, sin, cos_l, sin_l, causal, window, cache: bool):
            d = self.config.head_dim      # the tables as every layer's RoPE broadcasts them: [1, T, 1, D]
            cos, sin = cos.reshape(1, -1, 1, d), sin.reshape(1, -1, 1, d)
            if cos_l is not None:
                cos_l, sin_l = cos_l.reshape(1, -1, 1, d), sin_l.reshape(1, -1, 1, d)
            h = self.tok_embeddings(tokens)
            if self.embed_scale:
                h = h * self.embed_scale
            for layer in self.layers:
                c, s = (cos_l, sin_l) if layer.local_rope else (cos, sin)
                h = layer(h, pos, c, s, window if layer.sliding else causal, cache)
            logits = self.output(self.norm(h))
            cap = self.config.final_softcap
            return softcap(logits, cap) if cap else logits

        def forward(self, tokens, input_pos, cache_positions=None):
            """``cache_positions`` (optional, ``0..n-1`` with ``n = input_pos[-1] + 1``): the cache's valid
            prefix, which attention then reads alone; without it attention reads all ``max_context`` positions
            under the causal mask (the same logits, at a cost that does not shrink with the prefix)."""
            cos = self.rope_cos.index_select(0, input_pos)
            sin = self.rope_sin.index_select(0, input_pos)
            cos_l = sin_l = None
            if hasattr(self, "rope_cos_local"):
                cos_l = self.rope_cos_local.index_select(0, input_pos)
                sin_l = self.rope_sin_local.index_select(0, input_pos)
            # one additive mask for every (sliding) layer: 0 where a position may be attended, -inf where not
            keys = self.positions if cache_positions is None else cache_positions
            causal, window = self._masks(input_pos, keys)
            return self._run(tokens, input_pos, cos, sin, cos_l, sin_l, causal, window, cache=True)

        def forward_train(self, tokens):
            """Logits [B, T, vocab] of whole sequences from position 0, causal, without the KV cache (what a
            training program differentiates; the cache buffers are neither read nor written)."""
            t = tokens.shape[1]
            pos = self.positions[:t]
            causal, window = self._masks(pos, pos)
            cos_l = sin_l = None
            if hasattr(self, "rope_cos_local"):
                cos_l, sin_l = self.rope_cos_local[:t], self.rope_sin_local[:t]
            return self._run(tokens, pos, self.rope_cos[:t], self.rope_sin[:t], cos_l, sin_l, causal, window,
                             cache=False)

    return Llama


_LLAMA = None


def Llama(cfg: LlamaConfig, max_context: int = 128):  # noqa: N802 - a class in all but name
    """Build the model ``nn.Module`` of ``cfg``'s family (its class is made on first use, so importing stays
    light)."""
    return llama_class()(cfg, max_context)


def llama_class():
    """The model ``nn.Module`` class (for ``isinstance``)."""
    global _LLAMA
    if _LLAMA is None:
        _LLAMA = _torch_modules()
    return _LLAMA


# ------------------------------------------------------------------------------------- greedy
def cache_positions(input_pos):
    """The cache's valid prefix a forward at ``input_pos`` attends over, ``0..input_pos[-1]``: what the
    model's (and a program's) ``cache_positions`` input is given."""
    import torch

    return torch.arange(int(input_pos[-1]) + 1, dtype=torch.long)


def greedy(model, prompt: list[int], new_tokens: int, *, step=None) -> list[int]:
    """Greedy generation: prefill ``prompt`` in one call, then one token per call. ``step(tokens,
    input_pos) -> logits`` defaults to the eager model; pass a program's method to compare."""
    import torch

    if step is None:
        def step(tokens, input_pos):
            with torch.no_grad():
                return model(tokens, input_pos)
    pos = len(prompt)
    logits = step(torch.tensor([prompt], dtype=torch.long), torch.arange(pos, dtype=torch.long))
    out = [int(logits[0, -1].argmax())]
    while len(out) < new_tokens:
        logits = step(torch.tensor([[out[-1]]], dtype=torch.long), torch.tensor([pos], dtype=torch.long))
        pos += 1
        out.append(int(logits[0, -1].argmax()))
    return out


# ------------------------------------------------------------------------------------ writing
def write_gguf(model, path: str | Path, *, name: str = "edgerun tiny llama", tokenizer: Mapping[str, Any] | None = None,
               dtype: str = "F32") -> Path:
    """Write ``model`` (a :class:`Llama` of any family) as a GGUF with ``gguf.GGUFWriter``, with the keys and
    tensor names llama.cpp reads for its architecture (phi3's q/k/v and gate/up fused as its converter
    writes them): the inverse of :func:`load_llama`. ``tokenizer`` holds ``tokens``, ``merges``,
    ``token_types``, ``bos``, ``eos`` and optionally ``chat_template`` and ``add_bos``; ``dtype`` is ``F32``, ``F16``,
    ``Q8_0``, ``Q4_0`` or ``Q4_1`` for the 2-D weights (norms and biases stay F32)."""
    import gguf

    cfg: LlamaConfig = model.config
    fam = cfg.family
    path = Path(path)
    w = gguf.GGUFWriter(str(path), cfg.architecture)
    w.add_name(name)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    if cfg.key_length:
        w.add_key_length(cfg.key_length)
        w.add_value_length(cfg.key_length)
    w.add_rope_freq_base(cfg.rope_theta)
    if cfg.rope_freq_scale != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0 / cfg.rope_freq_scale)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.rot)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.sliding_window:
        if fam.window == "none":
            raise ValueError(f"a {cfg.architecture} GGUF has no sliding window (llama.cpp does not read one)")
        w.add_sliding_window(cfg.sliding_window)
        if fam.window == "pattern":
            flags = cfg.sliding_layers or (True,) * cfg.n_layers
            period = next((n for n in range(1, cfg.n_layers + 2) if swa_flags(cfg.n_layers, n) == flags), None)
            w.add_sliding_window_pattern(period if period is not None else list(flags))
            base_local = fam.local_rope_base if fam.local_rope_base is not None else cfg.rope_theta
            if (cfg.rope_theta_local or cfg.rope_theta) != base_local:
                w.add_rope_freq_base_swa(cfg.rope_theta_local or cfg.rope_theta)
    if fam.attn_softcap is not None:
        w.add_attn_logit_softcapping(cfg.attn_softcap)
    elif cfg.attn_softcap:
        raise ValueError(f"a {cfg.architecture} model has no attention soft-capping")
    if fam.final_softcap is not None:
        if cfg.final_softcap or fam.final_softcap:
            w.add_final_logit_softcapping(cfg.final_softcap)
    elif cfg.final_softcap:
        raise ValueError(f"a {cfg.architecture} model has no final soft-capping")
    if tokenizer is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(list(tokenizer["tokens"]))
        w.add_token_types(list(tokenizer["token_types"]))
        w.add_token_merges(list(tokenizer["merges"]))
        w.add_bos_token_id(int(tokenizer["bos"]))
        w.add_eos_token_id(int(tokenizer["eos"]))
        if tokenizer.get("add_bos") is not None:
            w.add_add_bos_token(bool(tokenizer["add_bos"]))
        if tokenizer.get("chat_template"):
            w.add_chat_template(tokenizer["chat_template"])
    qtype = gguf.GGMLQuantizationType[dtype]
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def put(gguf_name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name, arr)

    tensors = {"blk.0.attn_qkv.weight": True} if fam.fused_qkv else {}
    if fam.fused_qkv and "wq" in cfg.biases:
        tensors["blk.0.attn_qkv.bias"] = True
    sources = _sources(cfg, {f"blk.{i}.{n[6:]}": True for n in tensors for i in range(cfg.n_layers)})
    for s in sources:
        put(s.gguf, np.concatenate([state[param] for param, _, _ in s.targets], axis=0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
