"""The LLM families edgerun reads from a GGUF, each a row of switches over one model definition
(:class:`.gguf_model.Llama`), with the facts taken from how llama.cpp reads and runs that architecture
(``src/models/<arch>.cpp`` for the tensors and the graph, ``llama-model.cpp`` for the hyper-parameters
and the RoPE type, ``llama-graph.cpp`` for attention, soft-capping and the FFN).

What differs between the families, and nothing else, is here:

* **RoPE layout.** llama.cpp's ``LLAMA_ROPE_TYPE_NORM`` (``llama``: the converter permutes ``attn_q``/
  ``attn_k`` so rotation pairs are dims ``2i, 2i+1``) or ``LLAMA_ROPE_TYPE_NEOX`` (qwen2/3, gemma/2/3,
  phi3: pairs ``i, i + rot/2``, the Hugging Face layout, stored unpermuted).
* **Norms.** Every family is RMSNorm times the stored weight. Gemma's reference computes ``x * (1 + w)``,
  but llama.cpp's converter adds the 1 when it writes the GGUF (every ``*norm.weight`` of Gemma, Gemma 2
  and Gemma 3, the q/k norms included), and llama.cpp multiplies by the stored value: so does edgerun.
* **Activation** of the gated FFN: SiLU (SwiGLU) or GELU with the tanh approximation (GeGLU, Gemma).
* **Embedding scale** ``sqrt(dim)`` (Gemma), **q/k RMSNorm** per head before RoPE (qwen3, gemma3),
  **post-norms** after attention and after the FFN (gemma2/3), **soft-capping** ``cap * tanh(x / cap)``
  of attention scores and/or final logits (gemma2; gemma3's final one only if its GGUF gives it).
* **Sliding-window layers.** gemma2: window ``attention.sliding_window`` (default 4096) on the layers a
  period-2 pattern names (``attention.sliding_window_pattern`` overrides: a period, or one flag a layer);
  gemma3: only when the GGUF gives a window, period 6, and its own RoPE on those layers (base
  ``rope.freq_base_swa``, default 10000, and no linear scaling: ``rope.scaling.factor`` applies to the
  global layers only, as llama.cpp's ``rope_freq_scale_train_swa`` stays 1 for Gemma 3). ``llama``: every layer, when ``llama.attention.sliding_window``
  is given (Mistral v0.1 style) — an edgerun reading: llama.cpp ignores that key for ``llama``, so the two
  agree only on sequences shorter than the window. phi3: llama.cpp disables Phi's window, and so does
  edgerun.
* **Fused tensors** (phi3): ``attn_qkv`` = ``[q; k; v]`` rows and ``ffn_up`` = ``[gate; up]`` rows, split
  at load into the common ``wq``/``wk``/``wv`` and ``w1``/``w3``, so export, quantization and LoRA see
  one structure.
* **Which optional biases** the family's graph adds (q/k/v for all, as llama.cpp's shared
  ``create_tensor_qkv``; llama also output projection and FFN; qwen2 and phi3 the LM head).
* **Head size** from ``attention.key_length`` when it differs from ``dim / heads`` (qwen3, Gemma 7B),
  and RoPE over ``rope.dimension_count`` leading dims of each head (the rest pass through).
"""

from __future__ import annotations

import dataclasses

ROPE_NORM = "interleaved"   # llama.cpp LLAMA_ROPE_TYPE_NORM
ROPE_NEOX = "neox"          # llama.cpp LLAMA_ROPE_TYPE_NEOX

#: a linear layer's short name -> its parameter name in :class:`.gguf_model.Llama` (per block, or the head)
LINEARS = {"wq": "attention.wq", "wk": "attention.wk", "wv": "attention.wv", "wo": "attention.wo",
           "w1": "feed_forward.w1", "w2": "feed_forward.w2", "w3": "feed_forward.w3", "output": "output"}


@dataclasses.dataclass(frozen=True)
class Family:
    """The switches of one GGUF architecture (``general.architecture``)."""

    arch: str
    examples: str                           # for messages: which models are of this family
    rope: str = ROPE_NEOX
    activation: str = "silu"                # gated FFN: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale: bool = False               # token embeddings times sqrt(dim)
    qk_norm: bool = False                   # attn_q_norm / attn_k_norm (RMSNorm over head_dim, before RoPE)
    post_norms: bool = False                # post_attention_norm / post_ffw_norm
    head_always_tied: bool = False          # the LM head is token_embd; llama.cpp reads no output.weight
    fused_qkv: bool = False                 # attn_qkv may hold [q; k; v] (split at load)
    fused_gate_up: bool = False             # ffn_up holds [gate; up] and there is no ffn_gate
    biases: frozenset = frozenset({"wq", "wk", "wv"})   # linears that may carry a bias (see LINEARS)
    rope_freqs: bool = False                # accepts rope_freqs.weight (Llama 3 frequency factors)
    rope_must_cover_head: bool = False      # llama.cpp refuses rope.dimension_count != head size (llama; its
    #                                         qwen2/qwen3 graphs assert it)
    window: str = "none"                    # "none", "all" (every layer when the key is > 0) or "pattern"
    default_window: int = 0                 # window when the key is absent (0: no sliding layers)
    default_pattern: int = 0                # period n: layer i slides iff i % n < n - 1 (llama.cpp set_swa_pattern)
    local_rope_base: float | None = None    # RoPE base of sliding layers when rope.freq_base_swa is absent
    local_rope_scaled: bool = True          # sliding layers use the global linear RoPE scale (else 1)
    attn_softcap: float | None = None       # attention soft-cap when the key is absent; None: never capped
    final_softcap: float | None = None      # final-logit soft-cap when the key is absent; None: never capped
    wide_query_scale_layers: int = 0        # llama.cpp's Gemma "27B" rule: at this depth queries scale by
    #                                         (dim / heads) ** -0.5 instead of head_size ** -0.5


_LLAMA_BIASES = frozenset({"wq", "wk", "wv", "wo", "w1", "w2", "w3"})

FAMILIES: dict[str, Family] = {f.arch: f for f in (
    Family("llama", "Llama 2/3, SmolLM, TinyLlama, Mistral", rope=ROPE_NORM, biases=_LLAMA_BIASES, rope_freqs=True,
           rope_must_cover_head=True, window="all"),
    Family("qwen2", "Qwen2, Qwen2.5", biases=frozenset({"wq", "wk", "wv", "output"}), rope_must_cover_head=True),
    Family("qwen3", "Qwen3", qk_norm=True, rope_must_cover_head=True),
    Family("gemma", "Gemma", activation="gelu_tanh", embed_scale=True, head_always_tied=True),
    Family("gemma2", "Gemma 2", activation="gelu_tanh", embed_scale=True, head_always_tied=True, post_norms=True,
           window="pattern", default_window=4096, default_pattern=2, attn_softcap=50.0, final_softcap=30.0,
           wide_query_scale_layers=46),
    Family("gemma3", "Gemma 3 (text)", activation="gelu_tanh", embed_scale=True, qk_norm=True, post_norms=True,
           window="pattern", default_window=0, default_pattern=6, local_rope_base=10000.0, local_rope_scaled=False,
           final_softcap=0.0, wide_query_scale_layers=62),
    Family("phi3", "Phi-3, Phi-3.5, Phi-4-mini", fused_qkv=True, fused_gate_up=True,
           biases=frozenset({"wq", "wk", "wv", "wo", "output"})),
)}


def supported() -> str:
    """``llama (Llama 2/3, ...), qwen2 (...), ...`` for messages."""
    return ", ".join(f"{f.arch} ({f.examples})" for f in FAMILIES.values())


def swa_flags(n_layers: int, period: int) -> tuple[bool, ...]:
    """llama.cpp's ``set_swa_pattern(period)``: layer i slides iff ``period == 0 or i % period < period - 1``."""
    return tuple(period == 0 or i % period < period - 1 for i in range(n_layers))
