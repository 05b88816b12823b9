"""A preallocated key/value cache indexed by slot, for batched generation and beam search."""
import torch


class KVCache:
    """Keys and values of every layer: `k[i]`, `v[i]` of shape (batch, n_kv_heads, max_len, head_dim).

    One tensor per kind holds all layers (n_layers, batch, n_kv_heads, max_len, head_dim); the Decoder
    hands each layer its own `k[i]`, `v[i]` and writes slots [cache_start, cache_start + T).
    """

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype=torch.float32, device="cpu"):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, batch, max_len, dtype=None, device=None):
        """A cache shaped for `model` (a Decoder), in its weights' dtype and device unless given."""
        cfg, w = model.cfg, model.embed_tokens.weight
        return cls(cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim,
                   dtype=dtype or w.dtype, device=device or w.device)

    @property
    def batch(self) -> int:
        return self.k.shape[1]
