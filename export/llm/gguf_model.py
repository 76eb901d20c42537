"""A Llama-architecture GGUF -> an exportable PyTorch Llama with its KV cache as mutable buffers.

:func:`read_gguf` opens the file with llama.cpp's own reader (``gguf.GGUFReader``), checks it is a
Llama and collects the hyper-parameters into a :class:`LlamaConfig`; :func:`load_llama` dequantizes
every tensor (``gguf.quants.dequantize``: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_x and the K-quants)
into a :class:`Llama`.

Layout facts the model follows rather than converts:

* GGUF stores ``attn_q``/``attn_k`` permuted for llama.cpp's *interleaved* RoPE (rotation pairs are
  dims ``2i, 2i+1`` of each head). :class:`Llama` applies RoPE that way, so the GGUF weights are used
  as they are, and a Llama written by :func:`write_gguf` round-trips without any permutation.
* A GGUF without ``output.weight`` ties the LM head to ``token_embd`` (one parameter, counted once).
* Numpy shapes are GGUF's ``ne`` reversed, so a matrix is ``[out_features, in_features]`` as in torch.

The model: ``forward(tokens [1, T] int64, input_pos [T] int64) -> logits [1, T, vocab]``. It writes
the new keys/values into ``k_cache``/``v_cache`` (``[1, kv_heads, max_context, head_dim]`` buffers)
with ``index_copy_`` at ``input_pos`` and attends over the whole cache under a causal mask built from
``input_pos``, so a prompt (prefill) and single tokens (decode) are the same method with a dynamic
``T`` in ``1..max_context``. Only core ATen ops: no custom ops for the native runner to lack.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ExportError

STAGE = "load model"
ARCHITECTURE = "llama"

#: GGUF tensor names of one block -> this module's parameter names
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


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
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

    def __post_init__(self) -> None:
        for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "context_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """Keys and values of every layer for one position."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class GGUFFile:
    """An opened Llama GGUF: its config, metadata and (still quantized) tensors."""

    path: Path
    config: LlamaConfig
    name: str
    reader: Any                         # gguf.GGUFReader
    tensors: Mapping[str, Any]          # name -> gguf ReaderTensor
    rope_dim: int

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


def read_gguf(path: str | Path) -> GGUFFile:
    """Open ``path`` and check it is a Llama GGUF this module can load; errors name the file and
    what was expected (missing, not GGUF / truncated, another architecture, missing metadata)."""
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
    if arch != ARCHITECTURE:
        raise ExportError(f"{p} is a GGUF of architecture {arch!r}; edgerun reads only the {ARCHITECTURE!r} "
                          "architecture (Llama, SmolLM, TinyLlama, Mistral-style GGUFs).", stage=STAGE,
                          hint="Use a Llama-architecture model.")
    tensors = {t.name: t for t in reader.tensors}

    def need(key: str) -> Any:
        v = _field(reader, f"{ARCHITECTURE}.{key}")
        if v is None:
            raise ExportError(f"{p}: the GGUF metadata lacks {ARCHITECTURE}.{key}.", stage=STAGE,
                              hint="The file is incomplete or was written by an unusual converter.")
        return v

    n_heads = int(need("attention.head_count"))
    vocab = _field(reader, f"{ARCHITECTURE}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None and "token_embd.weight" in tensors:
        vocab = int(tensors["token_embd.weight"].shape[1])
    if vocab is None:
        raise ExportError(f"{p}: cannot tell the vocabulary size (no llama.vocab_size, tokenizer or "
                          "token_embd.weight).", stage=STAGE)
    try:
        config = LlamaConfig(
            n_layers=int(need("block_count")), dim=int(need("embedding_length")), n_heads=n_heads,
            n_kv_heads=int(_field(reader, f"{ARCHITECTURE}.attention.head_count_kv", n_heads)),
            ffn_dim=int(need("feed_forward_length")), vocab_size=int(vocab),
            rope_theta=_f32(_field(reader, f"{ARCHITECTURE}.rope.freq_base", 10000.0)),
            norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
            context_length=int(_field(reader, f"{ARCHITECTURE}.context_length", 2048)),
            tied_embeddings="output.weight" not in tensors)
    except ValueError as exc:
        raise ExportError(f"{p}: inconsistent Llama hyper-parameters: {exc}.", stage=STAGE) from None
    rope_dim = int(_field(reader, f"{ARCHITECTURE}.rope.dimension_count", config.head_dim))
    if rope_dim != config.head_dim:
        raise ExportError(f"{p}: RoPE covers {rope_dim} of each head's {config.head_dim} dims; edgerun's Llama "
                          "rotates whole heads.", stage=STAGE)
    expected = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{n}" for i in range(config.n_layers) for n in _BLOCK_TENSORS]
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ExportError(f"{p}: {len(missing)} tensor(s) of a {config.n_layers}-layer Llama are missing, e.g. "
                          f"{', '.join(missing[:3])}.", stage=STAGE)
    name = str(_field(reader, "general.name", p.stem))
    return GGUFFile(path=p, config=config, name=name, reader=reader, tensors=tensors, rope_dim=rope_dim)


def dequantized(g: GGUFFile, name: str) -> np.ndarray:
    """Tensor ``name`` as float32, in torch's shape (GGUF's ``ne`` reversed)."""
    import gguf

    t = g.tensors[name]
    shape = tuple(int(s) for s in reversed(list(t.shape)))
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


def load_llama(path: str | Path, *, max_context: int = 128, layers: int | None = None):
    """Read ``path`` into an eval-mode :class:`Llama` (fp32); ``layers`` keeps only the first N blocks
    (a fast stand-in of a big model for tests). Returns ``(model, GGUFFile)``."""
    import torch

    g = read_gguf(path)
    cfg = g.config
    if layers is not None:
        if not 1 <= layers <= cfg.n_layers:
            raise ExportError(f"{g.path} has {cfg.n_layers} layers; cannot keep {layers}.", stage=STAGE)
        cfg = dataclasses.replace(cfg, n_layers=layers)
    model = Llama(cfg, max_context=max_context)
    state = {"tok_embeddings.weight": dequantized(g, "token_embd.weight"),
             "norm.weight": dequantized(g, "output_norm.weight")}
    if not cfg.tied_embeddings:
        state["output.weight"] = dequantized(g, "output.weight")
    for i in range(cfg.n_layers):
        for src, dst in _BLOCK_TENSORS.items():
            state[f"layers.{i}.{dst}"] = dequantized(g, f"blk.{i}.{src}")
    own = model.state_dict()
    for key, arr in state.items():
        if tuple(own[key].shape) != arr.shape:
            raise ExportError(f"{g.path}: tensor for {key} has shape {list(arr.shape)}, the config implies "
                              f"{list(own[key].shape)}.", stage=STAGE)
    with torch.no_grad():
        for key, arr in state.items():
            own[key].copy_(torch.from_numpy(np.require(arr, requirements="W")))
    if "rope_freqs.weight" in g.tensors:  # Llama-3 style per-frequency scaling factors
        factors = torch.from_numpy(dequantized(g, "rope_freqs.weight").reshape(-1))
        model.set_rope_factors(factors)
    return model.eval().requires_grad_(False), g


# ------------------------------------------------------------------------------------- model
def _torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rope(x, cos, sin):
        """Interleaved RoPE (pairs 2i, 2i+1) on ``x`` [1, T, H, D] with ``cos``/``sin`` [T, D/2]."""
        pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3)

    class Attention(nn.Module):
        def __init__(self, cfg: LlamaConfig, max_context: int):
            super().__init__()
            self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
            self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
            self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
            self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
            shape = (1, cfg.n_kv_heads, max_context, cfg.head_dim)
            # persistent: torch.export lifts them as buffers and records their mutation
            self.register_buffer("k_cache", torch.zeros(shape))
            self.register_buffer("v_cache", torch.zeros(shape))

        def forward(self, x, input_pos, cos, sin, mask, cache: bool = True):
            b, t, _ = x.shape
            q = rope(self.wq(x).view(b, t, self.n_heads, self.head_dim), cos, sin)
            k = rope(self.wk(x).view(b, t, self.n_kv, self.head_dim), cos, sin)
            v = self.wv(x).view(b, t, self.n_kv, self.head_dim)
            if cache:
                self.k_cache.index_copy_(2, input_pos, k.transpose(1, 2))
                self.v_cache.index_copy_(2, input_pos, v.transpose(1, 2))
                keys, values = self.k_cache, self.v_cache
            else:  # training: the sequence attends to itself, no cache
                keys, values = k.transpose(1, 2), v.transpose(1, 2)
            # Grouped-query attention without copying the cache per query head: the query heads that
            # share a KV head are stacked along the rows ([b, kv, rep*t, d]), so each KV head is read once.
            rep = self.n_heads // self.n_kv
            qg = q.transpose(1, 2).reshape(b, self.n_kv, rep * t, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(2, 3)) * (self.head_dim ** -0.5)
            probs = torch.softmax(scores + mask, dim=-1)          # mask: additive, [rep*t, max_context]
            out = torch.matmul(probs, values)                      # [b, kv, rep*t, d]
            out = out.reshape(b, self.n_heads, t, self.head_dim).transpose(1, 2)
            return self.wo(out.reshape(b, t, self.n_heads * self.head_dim))

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.w1 = nn.Linear(dim, hidden, bias=False)   # gate
            self.w2 = nn.Linear(hidden, dim, bias=False)   # down
            self.w3 = nn.Linear(dim, hidden, bias=False)   # up

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class Block(nn.Module):
        def __init__(self, cfg: LlamaConfig, max_context: int):
            super().__init__()
            self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.attention = Attention(cfg, max_context)
            self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)

        def forward(self, x, input_pos, cos, sin, mask, cache: bool = True):
            h = x + self.attention(self.attention_norm(x), input_pos, cos, sin, mask, cache)
            return h + self.feed_forward(self.ffn_norm(h))

    class Llama(nn.Module):
        """See the module docstring. ``max_context`` fixes the KV cache's length."""

        def __init__(self, cfg: LlamaConfig, max_context: int = 128):
            super().__init__()
            if not isinstance(max_context, int) or max_context < 2:
                raise ValueError(f"max_context must be an integer >= 2, got {max_context!r}")
            self.config = cfg
            self.max_context = max_context
            self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
            self.layers = nn.ModuleList(Block(cfg, max_context) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
            if cfg.tied_embeddings:
                self.output.weight = self.tok_embeddings.weight
            self.register_buffer("positions", torch.arange(max_context), persistent=False)
            self.set_rope_factors(None)

        def set_rope_factors(self, factors) -> None:
            half = self.config.head_dim // 2
            freqs = 1.0 / (self.config.rope_theta ** (torch.arange(half, dtype=torch.float64) * 2 / (2 * half)))
            if factors is not None:
                freqs = freqs / factors.to(torch.float64)
            angles = torch.outer(torch.arange(self.max_context, dtype=torch.float64), freqs)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

        def reset_cache(self) -> None:
            for layer in self.layers:
                layer.attention.k_cache.zero_()
                layer.attention.v_cache.zero_()

        def forward(self, tokens, input_pos):
            cos = self.rope_cos.index_select(0, input_pos)
            sin = self.rope_sin.index_select(0, input_pos)
            # one additive causal mask for every layer: 0 where a position may be attended, -inf where not,
            # repeated for the query heads that share a KV head ([rep*T, max_context])
            allowed = self.positions.unsqueeze(0) <= input_pos.unsqueeze(1)    # [T, max_context]
            mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
            mask = mask.repeat(self.config.n_heads // self.config.n_kv_heads, 1)
            h = self.tok_embeddings(tokens)
            for layer in self.layers:
                h = layer(h, input_pos, cos, sin, mask)
            return self.output(self.norm(h))

        def forward_train(self, tokens):
            """Logits [B, T, vocab] of whole sequences from position 0, causal, without the KV cache (what a
            training program differentiates; the cache buffers are neither read nor written)."""
            t = tokens.shape[1]
            pos = self.positions[:t]
            allowed = pos.unsqueeze(0) <= pos.unsqueeze(1)                   # [T, T]
            mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
            mask = mask.repeat(self.config.n_heads // self.config.n_kv_heads, 1)
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
            h = self.tok_embeddings(tokens)
            for layer in self.layers:
                h = layer(h, pos, cos, sin, mask, cache=False)
            return self.output(self.norm(h))

    return Llama


_LLAMA = None


def Llama(cfg: LlamaConfig, max_context: int = 128):  # noqa: N802 - a class in all but name
    """Build the Llama ``nn.Module`` (its class is made on first use, so importing stays light)."""
    return llama_class()(cfg, max_context)


def llama_class():
    """The Llama ``nn.Module`` class (for ``isinstance``)."""
    global _LLAMA
    if _LLAMA is None:
        _LLAMA = _torch_modules()
    return _LLAMA


# ------------------------------------------------------------------------------------- greedy
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
    """Write ``model`` (a :class:`Llama`) as a Llama GGUF with ``gguf.GGUFWriter``: the inverse of
    :func:`load_llama`. ``tokenizer`` holds ``tokens``, ``merges``, ``token_types``, ``bos``, ``eos``
    and optionally ``chat_template``; ``dtype`` is ``F32``, ``F16``, ``Q8_0``, ``Q4_0`` or ``Q4_1``
    for the 2-D weights (norms stay F32)."""
    import gguf

    cfg: LlamaConfig = model.config
    path = Path(path)
    w = gguf.GGUFWriter(str(path), ARCHITECTURE)
    w.add_name(name)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(list(tokenizer["tokens"]))
        w.add_token_types(list(tokenizer["token_types"]))
        w.add_token_merges(list(tokenizer["merges"]))
        w.add_bos_token_id(int(tokenizer["bos"]))
        w.add_eos_token_id(int(tokenizer["eos"]))
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

    put("token_embd.weight", state["tok_embeddings.weight"])
    put("output_norm.weight", state["norm.weight"])
    if not cfg.tied_embeddings:
        put("output.weight", state["output.weight"])
    for i in range(cfg.n_layers):
        for src, dst in _BLOCK_TENSORS.items():
            put(f"blk.{i}.{src}", state[f"layers.{i}.{dst}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
