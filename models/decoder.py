"""One decoder-only transformer for Llama, Mistral, Qwen2, Phi-3 and OLMo-2, with one flag per variant.

Notation (shape comments):
    B batch, T new tokens, S key/value slots attended (cache_start + T with a KV cache, else T),
    D dim, H n_heads, K n_kv_heads, Dh head_dim, F hidden_dim (MLP), V vocab_size.

Module names mirror the checkpoint's, so adapter targets use the usual suffixes (`q_proj`, `up_proj`, ...).
A family that ships fused projections keeps them fused (`fused_projections`, Phi-3): one `qkv_proj`
(out [q; k; v]) and one `gate_up_proj` (out [gate; up]) whose outputs are split, so an adapter on
`qkv_proj` sees the whole fused matrix as the paper's Phi-3 runs did (one gradient SVD, lambda_o over all
9216 outputs; methods.md 7.3, 7.4 and 9.23).

Block, pre-norm (Llama, Mistral, Qwen2, Phi-3):      Block, post-norm (OLMo-2):
    x = x + attn(input_layernorm(x))                    x = x + post_attention_layernorm(attn(x))
    x = x + mlp(post_attention_layernorm(x))            x = x + post_feedforward_layernorm(mlp(x))
OLMo-2 also RMS-normalises the FULL q and k projections (across heads) before rotary embedding.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .lm_loss import chunked_cross_entropy


@dataclass
class DecoderConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, {"type": "linear", "factor": f} or
    # {"type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0  # rotary embedding on the first head_dim * factor dims only
    max_seq_len: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over the full q and k projections (OLMo-2)
    post_norm: bool = False  # norms after attention/MLP outputs instead of before (OLMo-2)
    norm_scale_in_fp32: bool = False  # RMSNorm multiplies its weight before casting back (OLMo-2)
    tie_embeddings: bool = False
    sliding_window: int | None = None  # a query sees itself and the window-1 slots before it
    fused_projections: bool = False  # qkv_proj and gate_up_proj as single matrices (Phi-3's checkpoint layout)

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary dims {self.rotary_dim} (head_dim {self.head_dim} * partial_rotary_factor "
                             f"{self.partial_rotary_factor}) must be even and within head_dim")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def rope_inv_freq(cfg: DecoderConfig, device=None) -> torch.Tensor:
    """Inverse frequencies (rotary_dim/2,) in fp32, with linear or llama3 scaling (as HF computes them)."""
    d = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["type"] == "linear":
        return inv_freq / s["factor"]
    if s["type"] == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        old_len, lo, hi, factor = (s["original_max_position_embeddings"], s["low_freq_factor"],
                                   s["high_freq_factor"], s["factor"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling type {s['type']!r}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, Dh); cos, sin (B, 1, T, rotary_dim): rotate the first rotary_dim dims (HF's rotate-half)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, scale_in_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.scale_in_fp32 = scale_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scale_in_fp32:  # OLMo-2: (w * h).to(dtype); Llama and the rest: w * h.to(dtype)
            return (self.weight * h).to(x.dtype)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        if cfg.fused_projections:
            self.qkv_proj = nn.Linear(cfg.dim, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)
        else:
            self.q_proj = nn.Linear(cfg.dim, q_dim, bias=cfg.qkv_bias)
            self.k_proj = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
            self.v_proj = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.fused = cfg.fused_projections
        self.o_proj = nn.Linear(q_dim, cfg.dim, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(q_dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
            self.k_norm = RMSNorm(kv_dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask, is_causal, cache_k=None, cache_v=None, cache_start=0):
        """cache_k, cache_v: this layer's KV cache (B, K, max_len, Dh), or None without a cache."""
        B, T, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split(self.split, dim=-1)  # (B, T, H*Dh), (B, T, K*Dh) x2
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_k is not None:
            out = self._cached_attention(q, k, v, mask, is_causal, cache_k, cache_v, cache_start)  # (B, H, T, Dh)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        n_rep = self.n_heads // self.n_kv_heads
        gqa = n_rep > 1 and mask is None  # SDPA's own GQA keeps the fast kernels only without a mask
        if n_rep > 1 and mask is not None:
            S = k.shape[2]
            k = k[:, :, None].expand(B, self.n_kv_heads, n_rep, S, self.head_dim).reshape(B, self.n_heads, S, -1)
            v = v[:, :, None].expand(B, self.n_kv_heads, n_rep, S, self.head_dim).reshape(B, self.n_heads, S, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)  # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    @torch.compiler.disable  # measured so (BENCHMARKS.md): eager cuDNN attention over the cache, written in place
    def _cached_attention(self, q, k, v, mask, is_causal, cache_k, cache_v, cache_start):
        """Write the T new keys/values into the cache, attend over its first S slots; (B, H, T, Dh).

        cache_start an int: slots [cache_start, cache_start + T), S = cache_start + T (dynamic shapes).
        cache_start a 0-dim long tensor: slots cache_start + arange(T) by index_copy_, S = mask.shape[-1]
        (fixed by the caller), so the step has static shapes and addresses and can be replayed as a CUDA graph.
        Always eager, also in compiled blocks (the compiled parts are the norms, rotary, MLP around it): SDPA
        reads the cache slices in place and the writes are plain index copies, so a compiled step holds no
        copy of the cache, whatever inductor would make of in-place writes to its inputs.
        With GQA the cache is never expanded to all heads: the n_rep query heads of each kv head are folded
        into the query length, (B, K, n_rep * T, Dh), and the mask is repeated along it to match.
        """
        B, H, T, Dh = q.shape
        K, n_rep = self.n_kv_heads, self.n_heads // self.n_kv_heads
        if isinstance(cache_start, torch.Tensor):
            slots = cache_start + torch.arange(T, device=q.device)  # (T,)
            cache_k.index_copy_(2, slots, k)
            cache_v.index_copy_(2, slots, v)
            S = mask.shape[-1]
        else:
            S = cache_start + T
            cache_k[:, :, cache_start:S] = k
            cache_v[:, :, cache_start:S] = v
        k, v = cache_k[:, :, :S], cache_v[:, :, :S]  # (B, K, S, Dh)
        if n_rep == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        if mask is None and is_causal:  # causal over folded rows would be wrong: SDPA's own GQA instead
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if mask is not None:
            mask = mask.expand(-1, -1, n_rep, -1) if T == 1 else mask.repeat(1, 1, n_rep, 1)  # (B|1, 1, n_rep*T, S)
        out = F.scaled_dot_product_attention(q.reshape(B, K, n_rep * T, Dh), k, v, attn_mask=mask)
        return out.reshape(B, H, T, Dh)  # a copy only where SDPA's output is not laid out (B, K, n_rep*T, Dh)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); fused: gate, up = gate_up_proj(x).chunk(2) (Phi-3)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.fused = cfg.fused_projections
        if self.fused:
            self.gate_up_proj = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=cfg.mlp_bias)
        else:
            self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
            self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x):
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, F) x2
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        if cfg.post_norm:
            self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
            self.post_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
        else:
            self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
            self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_scale_in_fp32)

    def forward(self, x, *attn_args):
        if self.post_norm:
            x = x + self.post_attention_layernorm(self.self_attn(x, *attn_args))
            return x + self.post_feedforward_layernorm(self.mlp(x))
        x = x + self.self_attn(self.input_layernorm(x), *attn_args)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_scale_in_fp32)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.activation_checkpointing = False
        self.loss_chunk = 256  # sequence positions per chunk of the fused LM-head loss (train.loss_chunk)

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of next-token losses over the labelled positions, their count) of a left-padded causal-LM batch
        (data/collate.py): input_ids, labels, and optionally pad_mask and positions, all (B, T)."""
        hidden = self.forward_hidden(batch["input_ids"], positions=batch.get("positions"),
                                     pad_mask=batch.get("pad_mask"))  # (B, T, D)
        return chunked_cross_entropy(hidden, self.lm_head, batch["labels"], self.loss_chunk)

    def set_activation_checkpointing(self, enabled: bool):
        """Recompute each block's activations in the backward pass instead of keeping them (training only)."""
        self.activation_checkpointing = enabled

    def compile_blocks(self):
        """torch.compile every block (one graph, shared by all blocks): fuses the norms, rotary, SwiGLU,
        residual adds and adapter epilogues around the matmuls, in training and in generation's decode steps
        (each layer gets its own cache tensors, so no block depends on its index). The module keeps its names
        and state dict."""
        # training, prefill and the two decode step shapes (T = 1, T = beams) each need their own graphs:
        # more than dynamo's default 8 before it would silently fall back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for block in self.layers:
            block.compile()

    def materialize_buffers(self, device):
        """Recompute the non-persistent buffers on `device` (after building on the meta device)."""
        self.inv_freq = rope_inv_freq(self.cfg, device=device)

    def _apply(self, fn, recurse=True):
        """Moves and casts (.to, .cuda, .bfloat16) recompute inv_freq in fp32 on its new device: a cast
        copy would round the rotary frequencies and shift the phases of long positions."""
        super()._apply(fn, recurse)
        self.materialize_buffers(self.inv_freq.device)
        return self

    def forward(self, input_ids, positions=None, pad_mask=None, kv_cache=None, cache_start=0, attn_mask=None):
        """Logits (B, T, V). See forward_hidden for the arguments."""
        return self.lm_head(self.forward_hidden(input_ids, positions, pad_mask, kv_cache, cache_start, attn_mask))

    def forward_hidden(self, input_ids, positions=None, pad_mask=None, kv_cache=None, cache_start=0,
                       attn_mask=None):
        """Final-normed hidden states (B, T, D).

        input_ids (B, T) long. positions (B, T) long, default cache_start + arange(T). pad_mask (B, S) bool,
        True = real token, S = cache_start + T with a cache, else T. kv_cache: models.kv_cache.KVCache; the T
        new keys/values go to slots [cache_start, cache_start + T) and queries attend over slots [0, S).

        With a cache, `attn_mask` (B, T, S) bool may replace pad_mask: which slots each new token attends to,
        the caller's whole mask (padding, causality, window, beam ancestry), used as given.
        Static decode steps (CUDA graphs): cache_start a 0-dim long tensor on the model's device, with
        attn_mask; then S = attn_mask.shape[-1], so no shape depends on cache_start.
        """
        B, T = input_ids.shape
        static = isinstance(cache_start, torch.Tensor)
        if static and (kv_cache is None or attn_mask is None or cache_start.dim() != 0):
            raise ValueError("a tensor cache_start (static step) needs a kv_cache, an attn_mask and a 0-dim tensor")
        if kv_cache is None and (cache_start or attn_mask is not None):
            raise ValueError("cache_start and attn_mask are only meaningful with a kv_cache")
        if attn_mask is not None and pad_mask is not None:
            raise ValueError("pass pad_mask or attn_mask, not both: attn_mask is the whole mask")
        S = attn_mask.shape[-1] if static else cache_start + T if kv_cache is not None else T
        if kv_cache is not None and S > kv_cache.max_len:
            raise ValueError(f"KV cache holds {kv_cache.max_len} slots, forward needs {S}")
        if pad_mask is not None and tuple(pad_mask.shape) != (B, S):
            raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}, expected (batch, slots) = {(B, S)}")
        if attn_mask is not None and tuple(attn_mask.shape) != (B, T, S):
            raise ValueError(f"attn_mask has shape {tuple(attn_mask.shape)}, expected (batch, new tokens, "
                             f"slots) = {(B, T, S)}")
        device = input_ids.device
        if positions is None:
            positions = cache_start + torch.arange(T, device=device)[None]  # (1, T)
        x = self.embed_tokens(input_ids)  # (B, T, D)
        freqs = positions[..., None].float() * self.inv_freq  # (B|1, T, rotary_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B|1, 1, T, rotary_dim)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if attn_mask is not None:
            mask, is_causal = attn_mask[:, None], False  # (B, 1, T, S)
        else:
            mask, is_causal = self._attention_mask(T, S, cache_start, pad_mask, device)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, layer in enumerate(self.layers):
            cache = () if kv_cache is None else (kv_cache.k[i], kv_cache.v[i], cache_start)  # this layer's
            if recompute:
                x = checkpoint(layer, x, cos, sin, mask, is_causal, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, is_causal, *cache)
        return self.norm(x)

    def _attention_mask(self, T, S, cache_start, pad_mask, device):
        """(mask (B|1, 1, T, S) bool or None, is_causal) for SDPA; None where SDPA's own paths are exact."""
        window = self.cfg.sliding_window
        window_bites = window is not None and S > window
        if pad_mask is None and not window_bites:
            if cache_start == 0:
                return None, T > 1
            if T == 1:
                return None, False
        q_slot = cache_start + torch.arange(T, device=device)[:, None]  # (T, 1)
        k_slot = torch.arange(S, device=device)[None, :]  # (1, S)
        allowed = k_slot <= q_slot  # (T, S)
        if window_bites:
            allowed = allowed & (k_slot > q_slot - window)
        if pad_mask is not None:
            # A pad query row would be fully masked (NaN in SDPA): let every query see its own slot.
            allowed = (allowed[None] & pad_mask[:, None, :]) | (k_slot == q_slot)[None]  # (B, T, S)
        else:
            allowed = allowed[None]  # (1, T, S)
        return allowed[:, None], False
