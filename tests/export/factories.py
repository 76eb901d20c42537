"""User-model factories for the tests (``factories:NAME`` with this folder on sys.path)."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + linear layers: exercises every scheme (8da4w needs a linear input width % 32 == 0)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), (torch.randn(1, 3, 8, 8),)


class TwoInTwoOut(nn.Module):
    def forward(self, a, b):
        return a + b, (a * b).sum(dim=1)


def two_in_two_out():
    return TwoInTwoOut(), (torch.randn(1, 4), torch.randn(1, 4))


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export must refuse it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def branchy():
    return Branchy(), (torch.randn(1, 4),)


def not_a_pair():
    return TinyNet()


def wrong_model_type():
    return "a string", (torch.randn(1, 4),)


def raises():
    raise RuntimeError("factory exploded on purpose")


NOT_CALLABLE = 3


# ---------------------------------------------------------------------------------------------
# issue 13: eight kinds of models that once failed to export, in tiny versions


class LSTMClassifier(nn.Module):
    """An LSTM over 12 time steps (torch.export unrolls it) and a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm_classifier():
    torch.manual_seed(0)
    return LSTMClassifier().eval(), (torch.randn(1, 12, 8),)


class TinyGPT(nn.Module):
    """A GPT-style decoder over int64 token ids: embeddings, one causal attention block, LM head."""

    def __init__(self, vocab: int = 64, dim: int = 32, ctx: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(ctx, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("positions", torch.arange(ctx), persistent=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(self.positions[: ids.shape[1]])
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        heads = lambda t: t.view(t.shape[0], t.shape[1], 2, -1).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(x.shape))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def tiny_gpt():
    torch.manual_seed(0)
    return TinyGPT().eval(), (torch.randint(0, 64, (1, 16)),)


class TinyUNet(nn.Module):
    """Two down steps, bilinear upsampling, skip connections by concatenation."""

    def __init__(self):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU())  # noqa: E731
        self.enc1, self.enc2, self.mid = block(3, 8), block(8, 16), block(16, 16)
        self.dec2, self.dec1 = block(32, 8), block(16, 8)
        self.out = nn.Conv2d(8, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.out(d1)


def tiny_unet():
    torch.manual_seed(0)
    return TinyUNet().eval(), (torch.randn(1, 3, 16, 16),)


class TwoHead(nn.Module):
    """A shared conv trunk with a classifier head and a conv regression (box) head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.cls = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
        self.reg = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        f = self.trunk(x)
        return self.cls(f), self.reg(f)


def two_head():
    torch.manual_seed(0)
    return TwoHead().eval(), (torch.randn(1, 3, 16, 16),)


class DilatedAudio(nn.Module):
    """Dilated Conv1d stack with BatchNorm1d (a tiny WaveNet/TCN-style audio classifier)."""

    def __init__(self):
        super().__init__()
        layers, ch = [], 1
        for d in (1, 2, 4):
            layers += [nn.Conv1d(ch, 8, 3, dilation=d, padding=d), nn.BatchNorm1d(8), nn.ReLU()]
            ch = 8
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x).mean(-1))


def dilated_audio():
    torch.manual_seed(0)
    model = DilatedAudio()
    with torch.no_grad():  # settle BatchNorm statistics so eval mode is not an identity
        model.train()
        for _ in range(3):
            model(torch.randn(4, 1, 64))
    return model.eval(), (torch.randn(1, 1, 64),)


class PatchAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t):
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        return t + self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v))


class MobileViTBlock(nn.Module):
    """conv -> unfold into 2x2 patches -> transformer attention over patches -> fold back -> fuse."""

    def __init__(self, ch: int = 8, dim: int = 32, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.local = nn.Conv2d(ch, ch, 3, padding=1)
        self.to_dim = nn.Conv2d(ch, dim // (patch * patch), 1)
        self.attn = PatchAttention(dim)
        self.fuse = nn.Conv2d(dim // (patch * patch) + ch, ch, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = self.to_dim(torch.relu(self.local(x)))
        patches = torch.nn.functional.unfold(y, self.patch, stride=self.patch)  # [B, C*p*p, L]
        t = self.attn(patches.transpose(1, 2))                                    # [B, L, C*p*p]
        y = torch.nn.functional.fold(t.transpose(1, 2), (h, w), self.patch, stride=self.patch)
        return self.fuse(torch.cat([x, y], 1))


def mobilevit_block():
    torch.manual_seed(0)
    return MobileViTBlock().eval(), (torch.randn(1, 8, 8, 8),)


class FloatAndIndex(nn.Module):
    """A float feature vector and an int64 category index into an embedding, then an MLP."""

    def __init__(self, categories: int = 10):
        super().__init__()
        self.emb = nn.Embedding(categories, 32)
        self.fc1 = nn.Linear(32 + 32, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, features, index):
        return self.fc2(torch.relu(self.fc1(torch.cat([features, self.emb(index)], 1))))


def float_and_index():
    torch.manual_seed(0)
    # the example index (7) is well inside the embedding's 10 rows; a generator that draws
    # indices up to 2 * max would run past them
    return FloatAndIndex().eval(), (torch.randn(1, 32), torch.tensor([7]))


class ChannelShuffleNet(nn.Module):
    """ShuffleNet-style: grouped conv, channel shuffle (view/transpose/view), grouped conv, head."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.g1 = nn.Conv2d(8, 8, 1, groups=groups)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g2 = nn.Conv2d(8, 8, 1, groups=groups)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.g1(x))
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        y = self.g2(self.dw(y))
        return self.head(torch.relu(x + y).mean((2, 3)))


def channel_shuffle():
    torch.manual_seed(0)
    return ChannelShuffleNet().eval(), (torch.randn(1, 3, 8, 8),)


class TinyPooled(nn.Module):
    """A MobileNet-shaped tail in miniature: conv, BatchNorm, ReLU6, a strided conv, global average pool,
    linear (the Arm tests: adaptive average pooling is what needs the Arm quantizer's unguarded graph)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def tiny_pooled():
    torch.manual_seed(0)
    return TinyPooled().eval(), (torch.randn(1, 3, 8, 8),)
