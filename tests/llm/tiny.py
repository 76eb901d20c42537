"""The tiny test Llama, made here: a byte-level BPE trained with ``tokenizers`` on the text edgerun
ships (export/llm/data/train.txt) and a seeded random 2-layer Llama (d=64) written as a GGUF with
``gguf.GGUFWriter`` — so the GGUF path is exercised end to end in seconds, nothing downloaded."""

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


def write_tiny_gguf(path: Path, *, seed: int = 0, dtype: str = "F32", tied: bool = True) -> Path:
    import dataclasses

    import torch

    from edgerun.export.llm.gguf_model import Llama, write_gguf

    tokenizer = train_tokenizer()
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
