"""The tiny test models, made here: a byte-level BPE trained with ``tokenizers`` on the text edgerun
ships (export/llm/data/train.txt) and a seeded random 2-layer model (d=64) of each LLM family written as
a GGUF with ``gguf.GGUFWriter`` (by ``write_gguf``: the keys and tensor names llama.cpp reads for that
architecture, phi3's fused q/k/v and gate/up included) — so the GGUF path of every family is exercised
end to end in seconds, nothing downloaded. The families' switches are set so each one matters: head
sizes from ``attention.key_length`` (qwen3, gemma, gemma3), MQA (gemma), a 6-token window on one layer of
two (gemma2, gemma3), soft-caps small enough to bite (gemma2), a separate local RoPE base and a linear
RoPE scale on the global layer (gemma3), q/k/v biases and an untied head (qwen2, phi3)."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "export" / "llm" / "data"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def train_tokenizer(vocab_size: int = 384) -> dict:
    """GGUF-style tokenizer metadata (tokens by id, merges, token types, BOS/EOS, chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(DATA / "train.txt")], trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return {"tokens": tokens, "merges": merges, "token_types": types, "bos": 1, "eos": 2,
            "chat_template": CHAT_TEMPLATE}


def tiny_config(vocab_size: int):
    from edgerun.export.llm.gguf_model import LlamaConfig

    return LlamaConfig(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=vocab_size,
                       rope_theta=10000.0, norm_eps=1e-5, context_length=256, tied_embeddings=True)


def write_tiny_gguf(path: Path, *, seed: int = 0, dtype: str = "F32", tied: bool = True,
                    add_bos: bool | None = None) -> Path:
    import dataclasses

    import torch

    from edgerun.export.llm.gguf_model import Llama, write_gguf

    tokenizer = {**train_tokenizer(), "add_bos": add_bos}   # add_bos None: the key unwritten (llama.cpp: off)
    cfg = dataclasses.replace(tiny_config(len(tokenizer["tokens"])), tied_embeddings=tied)
    torch.manual_seed(seed)
    model = Llama(cfg, max_context=64)
    with torch.no_grad():   # non-trivial norms so a wrong mapping of any tensor shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0.0, 0.2)
    return write_gguf(model, path, name="edgerun tiny llama", tokenizer=tokenizer, dtype=dtype)


#: per family: what its tiny model changes from tiny_config (all read back from the GGUF as written)
FAMILY_SETTINGS = {
    "llama": {},
    "qwen2": {"biases": ("wk", "wq", "wv"), "tied_embeddings": False},
    "qwen3": {"key_length": 32},
    "gemma": {"n_kv_heads": 1, "key_length": 32},
    "gemma2": {"sliding_window": 6, "sliding_layers": (True, False), "attn_softcap": 5.0, "final_softcap": 3.0},
    "gemma3": {"key_length": 32, "sliding_window": 6, "sliding_layers": (True, False), "rope_theta": 1000000.0,
               "rope_theta_local": 10000.0, "rope_freq_scale": 0.5, "rope_freq_scale_local": 1.0},
    "phi3": {"tied_embeddings": False},
}
FAMILIES = tuple(FAMILY_SETTINGS)


def family_config(arch: str, vocab_size: int):
    import dataclasses

    return dataclasses.replace(tiny_config(vocab_size), architecture=arch, **FAMILY_SETTINGS[arch])


def random_family_model(arch: str, vocab_size: int, *, seed: int = 0, max_context: int = 64):
    """A seeded random model of ``arch``: norms 1 + 0.1 N(0,1) (so a wrong mapping of any shows), every other
    weight and bias N(0, 0.2^2) -- but the embeddings of families that scale them by sqrt(dim) (Gemma) N(0,
    0.05^2): at 0.2 the scaled, tied embedding of the last token outweighs everything and greedy repeats it."""
    import torch

    from edgerun.export.llm.gguf_model import Llama

    torch.manual_seed(seed)
    model = Llama(family_config(arch, vocab_size), max_context=max_context)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name == "tok_embeddings.weight" and model.config.family.embed_scale:
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.2)
    return model.eval().requires_grad_(False)


_TOKENIZER: dict = {}


def tiny_tokenizer() -> dict:
    """:func:`train_tokenizer`'s default result, trained once per process (do not change it)."""
    if not _TOKENIZER:
        _TOKENIZER.update(train_tokenizer())
    return _TOKENIZER


def write_family_gguf(path: Path, arch: str, *, seed: int = 0, dtype: str = "F32") -> Path:
    """The tiny ``arch`` model as a GGUF llama.cpp loads (2 layers, d=64, the tiny BPE tokenizer)."""
    from edgerun.export.llm.gguf_model import write_gguf

    tokenizer = tiny_tokenizer()
    model = random_family_model(arch, len(tokenizer["tokens"]), seed=seed)
    # not "phi3" in general.name: llama.cpp then sets attributes of Phi-3's own special tokens ("</s>", ...) by
    # name, which the tiny BPE vocabulary lacks (its loader fails with unordered_map::at)
    name = f"edgerun tiny {arch.replace('phi3', 'phi 3')}"
    return write_gguf(model, path, name=name, tokenizer=tokenizer, dtype=dtype)
