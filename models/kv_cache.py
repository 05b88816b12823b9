"""A preallocated key/value cache indexed by slot, for batched generation and beam search."""
import torch


class KVCache:
    """Keys and values of every layer: `k[i]`, `v[i]` of shape (batch, n_kv_heads, max_len, head_dim).

    One tensor per kind holds all layers (n_layers, batch, n_kv_heads, max_len, head_dim), so `reorder`
    is one index_select for the whole model. The Decoder writes slots [cache_start, cache_start + T).
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

    def reorder(self, index: torch.Tensor):
        """Keep batch rows `index` (long, (new_batch,)) in that order (new tensors; the batch may change)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)

    def clone(self) -> "KVCache":
        twin = KVCache.__new__(KVCache)
        twin.k, twin.v, twin.max_len = self.k.clone(), self.v.clone(), self.max_len
        return twin

    def copy_rows_from(self, src: "KVCache", index: torch.Tensor, start: int, end: int):
        """Row r <- row index[r] of `src`, slots [start, end) only: beam search's parent selection.

        One index_select per kind, written straight into this cache (its tensors keep their addresses, so
        a captured CUDA graph keeps reading them): one read and one write of the slot range, where an
        in-place gather would need a temporary and a second pass. `src` must be another cache (the rows
        would overwrite one another), e.g. its `clone()`, alternating roles step by step.
        """
        if src is self or src.k.data_ptr() == self.k.data_ptr():
            raise ValueError("KVCache.copy_rows_from: src must be a different cache (use clone())")
        if end > start:
            torch.index_select(src.k[:, :, :, start:end], 1, index, out=self.k[:, :, :, start:end])
            torch.index_select(src.v[:, :, :, start:end], 1, index, out=self.v[:, :, :, start:end])
