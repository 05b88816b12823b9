"""A pre-LN Vision Transformer covering DINOv2 and CLIP's vision tower, with their classification heads.

Notation: B batch, C channels, S image side, P patch side, N = (S / P)^2 patches, T = 1 + N tokens,
D model width (`dim`), H heads, Dh = D / H, F feed-forward width, L labels.

    x = [cls; patch_embed(pixels)] + pos                          (B, T, D)
        DINOv2: pos is interpolated (bicubic, as HF) when the image's patch grid is not the checkpoint's
        CLIP:   x = pre_layrnorm(x); the image must be the config's image_size
    per layer:
        x = x + ls1 * attn(norm1(x))           (ls: DINOv2's layer scale; CLIP has none)
        x = x + ls2 * fc2(act(fc1(norm2(x))))  (act: GELU for DINOv2, quick-GELU for CLIP)
    DINOv2: hidden = layernorm(x)       logits = classifier([hidden[:, 0]; mean(hidden[:, 1:])])
    CLIP:   hidden = x                  logits = classifier(mean(hidden[:, 1:]))
            (pooled features post_layernorm(hidden[:, 0]) are what CLIP's image embedding starts from)

The heads are HF's Dinov2ForImageClassification and CLIPForImageClassification, which the paper fine-tunes.
Module names mirror each publisher's checkpoint (DINOv2: attention.attention.query/key/value,
attention.output.dense, mlp.fc1/fc2; CLIP: self_attn.q_proj/k_proj/v_proj/out_proj, mlp.fc1/fc2), so the
adapter targets are the paper's suffixes and q, k, v are separate linears, each one a target.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYOUTS = ("dinov2", "clip")
ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


@dataclass
class ViTConfig:
    layout: str  # "dinov2" | "clip"
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    image_size: int  # the checkpoint's position grid is (image_size / patch_size)^2
    patch_size: int
    num_channels: int = 3
    norm_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0  # DINOv2: after the embeddings
    num_labels: int = 0  # 0: bare backbone; >= 1: a classification head `classifier`

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"ViTConfig: layout {self.layout!r} is not one of {LAYOUTS}")
        if self.dim % self.n_heads:
            raise ValueError(f"ViTConfig: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"ViTConfig: act {self.act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def attend(x: torch.Tensor, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, n_heads: int,
           dropout: float) -> torch.Tensor:
    """(B, T, D) -> (B, T, D): bidirectional softmax attention (SDPA), scale 1/sqrt(Dh)."""
    B, T, D = x.shape
    Dh = D // n_heads
    q, k, v = (proj(x).view(B, T, n_heads, Dh).transpose(1, 2) for proj in (q_proj, k_proj, v_proj))  # (B, H, T, Dh)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=1.0 / math.sqrt(Dh))  # (B, H, T, Dh)
    return a.transpose(1, 2).reshape(B, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.act]
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


# --- DINOv2 ----------------------------------------------------------------------------------------------

class Dinov2PatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)


class Dinov2Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.patch_embeddings = Dinov2PatchEmbeddings(cfg)
        self.position_embeddings = nn.Parameter(torch.empty(1, cfg.grid ** 2 + 1, cfg.dim))
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """(1, 1 + rows * cols, D): the checkpoint's grid, bicubically resized (in fp32) to rows x cols when
        it differs, exactly as HF's Dinov2Embeddings.interpolate_pos_encoding."""
        pos, g = self.position_embeddings, self.cfg.grid
        if rows == g and cols == g:
            return pos
        patch = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        patch = F.interpolate(patch.float(), size=(rows, cols), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        P = self.cfg.patch_size
        patches = self.patch_embeddings.projection(pixels.to(self.cls_token.dtype))  # (B, D, S/P, S/P)
        x = torch.cat([self.cls_token.expand(pixels.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return self.dropout(x + self.positions(pixels.shape[-2] // P, pixels.shape[-1] // P))  # (B, T, D)


class Dinov2SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.query = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.key = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.value = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)


class Dinov2SelfOutput(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)


class Dinov2Attention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.attention = Dinov2SelfAttention(cfg)
        self.output = Dinov2SelfOutput(cfg)

    def forward(self, x):
        s, dropout = self.attention, self.cfg.attention_dropout if self.training else 0.0
        return self.output.dense(attend(x, s.query, s.key, s.value, self.cfg.n_heads, dropout))


class LayerScale(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.empty(cfg.dim))

    def forward(self, x):
        return x * self.lambda1


class Dinov2Layer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Dinov2Attention(cfg)
        self.layer_scale1 = LayerScale(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.layer_scale2 = LayerScale(cfg)

    def forward(self, x):
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Dinov2Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(Dinov2Layer(cfg) for _ in range(cfg.n_layers))


# --- CLIP ------------------------------------------------------------------------------------------------

class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.class_embedding = nn.Parameter(torch.empty(cfg.dim))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.dim, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.grid ** 2 + 1, cfg.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        S = self.cfg.image_size
        if pixels.shape[-2:] != (S, S):
            raise ValueError(f"input image size {tuple(pixels.shape[-2:])} does not match the CLIP model's {S}x{S}")
        patches = self.patch_embedding(pixels.to(self.class_embedding.dtype))  # (B, D, S/P, S/P)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1) + self.position_embedding.weight  # (B, T, D)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x):
        dropout = self.cfg.attention_dropout if self.training else 0.0
        return self.out_proj(attend(x, self.q_proj, self.k_proj, self.v_proj, self.cfg.n_heads, dropout))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.n_layers))


# --- the model -------------------------------------------------------------------------------------------

class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.layout == "dinov2":
            self.embeddings = Dinov2Embeddings(cfg)
            self.encoder = Dinov2Encoder(cfg)
            self.layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
            head_in = 2 * cfg.dim  # [cls; mean patch]
        else:
            self.embeddings = CLIPVisionEmbeddings(cfg)
            self.pre_layrnorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)  # sic: the checkpoint's name
            self.encoder = CLIPEncoder(cfg)
            self.post_layernorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
            head_in = cfg.dim  # mean patch
        self.classifier = nn.Linear(head_in, cfg.num_labels) if cfg.num_labels else None
        self.activation_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layer if self.cfg.layout == "dinov2" else self.encoder.layers

    def forward_hidden(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, C, S, S) -> the last hidden state (B, T, D), HF's last_hidden_state."""
        x = self.embeddings(pixel_values)
        if self.cfg.layout == "clip":
            x = self.pre_layrnorm(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.layernorm(x) if self.cfg.layout == "dinov2" else x

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): HF's pooler_output (DINOv2: the CLS token; CLIP: post_layernorm of it)."""
        return hidden[:, 0] if self.cfg.layout == "dinov2" else self.post_layernorm(hidden[:, 0])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """-> classification logits (B, L)."""
        if self.classifier is None:
            raise ValueError("ViT.forward needs a classification head: build it with num_labels >= 1")
        hidden = self.forward_hidden(pixel_values)
        patches = hidden[:, 1:].mean(dim=1)  # (B, D)
        features = torch.cat([hidden[:, 0], patches], dim=-1) if self.cfg.layout == "dinov2" else patches
        return self.classifier(features)

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-image cross-entropies, number of images) of a batch from data/image_transforms.py."""
        logits = self(batch["pixel_values"]).float()  # (B, L)
        labels = batch["labels"]
        return F.cross_entropy(logits, labels, reduction="sum"), torch.tensor(labels.shape[0], device=labels.device)

    def set_activation_checkpointing(self, enabled: bool):
        """Recompute each block in the backward pass (less activation memory, one more forward)."""
        self.activation_checkpointing = enabled

    def compile_blocks(self):
        """torch.compile every block (one graph shared by all blocks of the same shapes)."""
        for block in self.blocks:
            block.compile()

    def materialize_buffers(self, device):
        """Nothing to recompute after loading: the model has no buffers."""
