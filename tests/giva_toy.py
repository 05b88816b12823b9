"""A tiny decoder-shaped stand-in model for the giva tests: HF-style module names, every kind of
projection shape (square, narrower k/v as with GQA, wider up, narrower down), a real causal-LM loss."""
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, KV_DIM, HIDDEN = 40, 24, 8, 40


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Module()
        for name, out in [("q_proj", DIM), ("k_proj", KV_DIM), ("v_proj", KV_DIM)]:
            setattr(self.self_attn, name, nn.Linear(DIM, out, bias=True))
        self.self_attn.o_proj = nn.Linear(KV_DIM, DIM, bias=False)
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(DIM, HIDDEN, bias=False)
        self.mlp.down_proj = nn.Linear(HIDDEN, DIM, bias=False)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):  # (B, T, DIM)
        a = self.self_attn
        h = self.norm(x)
        q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)  # (B, T, DIM), (B, T, KV), (B, T, KV)
        att = torch.softmax((q[..., :KV_DIM] @ k.transpose(1, 2)) / KV_DIM ** 0.5, -1)  # (B, T, T)
        x = x + a.o_proj(att @ v)
        return x + self.mlp.down_proj(F.silu(self.mlp.up_proj(self.norm(x))))


class ToyLM(nn.Module):
    def __init__(self, n_layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(Block() for _ in range(n_layers))
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, ids):  # (B, T) -> (B, T, VOCAB)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)


def lm_loss(model, ids):
    """Mean next-token cross-entropy over the batch's tokens."""
    logits = model(ids[:, :-1])  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def toy_batches(k, batch=3, seq=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(k)]


def adapt(model, cfg, grads=None):
    """The method's bases (from `grads` for GiVA) and its adapters on `model`, as train.py's steps 4-5."""
    from giva import apply_adapters, compute_bases
    return apply_adapters(model, cfg, compute_bases(model, cfg, grads))
