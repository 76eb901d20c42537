"""A small transformer text encoder (token ids in, a sentence embedding out)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 2000
SEQ_LEN = 32


class TextEncoder(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 128, layers: int = 2, heads: int = 4, seq_len: int = SEQ_LEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos[:, : ids.shape[1]])
        return self.proj(self.norm(h.mean(dim=1)))


def text_encoder(seed: int = 0):
    # The MHA fast path exports but then needs _transformer_encoder_layer_fwd, which no ExecuTorch
    # kernel library provides: the program would fail to load on the device.
    torch.backends.mha.set_fastpath_enabled(False)
    torch.manual_seed(seed)
    model = TextEncoder()
    ids = torch.randint(0, VOCAB, (1, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    return model.eval(), (ids,)
