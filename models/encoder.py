"""A bidirectional post-LN transformer encoder covering BERT and RoBERTa, with their classification heads.

Notation: B batch, T tokens, D model width (`dim`), H heads, Dh = D / H, F feed-forward width, L labels.

    x = LayerNorm(word_emb[ids] + position_emb[pos] + token_type_emb[types])
    per layer (post-LN):
        x = LayerNorm(x + attention.output.dense(softmax(q k^T / sqrt(Dh) + key mask) v))
        x = LayerNorm(x + output.dense(act(intermediate.dense(x))))
    head:
        BERT     logits = classifier(tanh(pooler.dense(x[:, 0])))
        RoBERTa  logits = classifier.out_proj(tanh(classifier.dense(x[:, 0])))

Module names mirror HF's BertModel/RobertaModel (without the `bert.`/`roberta.` prefix), so the adapter
targets of the paper's GLUE runs are the usual suffixes: query, key, value, dense. RoBERTa's head has a
`classifier.dense` too; the paper's runs train the head fully (adapter.modules_to_save: [classifier]), and
giva never targets a module inside modules_to_save, as peft.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}
CLASSIFIER_STYLES = ("pooler_linear", "cls_mlp")


@dataclass
class EncoderConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    max_positions: int
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    pad_id: int = 0
    # None: positions are 0..T-1 (BERT, right padding). An int p: positions = cumsum(real) * real + p, so
    # padding sits at p and the first real token at p + 1 (RoBERTa, p = padding_idx = 1).
    position_offset: int | None = None
    act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pooler: bool = True  # BERT checkpoints carry pooler.dense; RoBERTa's sequence classifier has none
    classifier: str = "pooler_linear"  # "pooler_linear" (BERT) or "cls_mlp" (RoBERTa)
    num_labels: int = 0  # 0: bare encoder, 1: regression (STS-B), >= 2: classification

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"EncoderConfig: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"EncoderConfig: act {self.act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.classifier not in CLASSIFIER_STYLES:
            raise ValueError(f"EncoderConfig: classifier {self.classifier!r} is not one of {CLASSIFIER_STYLES}")
        if self.num_labels and self.classifier == "pooler_linear" and not self.pooler:
            raise ValueError("EncoderConfig: classifier 'pooler_linear' needs pooler=True")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.dim)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        if self.cfg.position_offset is None:
            return torch.arange(T, device=input_ids.device).expand(B, T)
        real = input_ids.ne(self.cfg.pad_id).long()  # (B, T), as HF: pad tokens keep the offset position
        return torch.cumsum(real, dim=1) * real + self.cfg.position_offset

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(self.positions(input_ids))
             + self.token_type_embeddings(token_type_ids))  # (B, T, D)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)


class AttentionOutput(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.self = SelfAttention(cfg)
        self.output = AttentionOutput(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        H, Dh = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = (proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
                   for proj in (self.self.query, self.self.key, self.self.value))
        dropout = self.cfg.attention_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout,
                                           scale=1.0 / math.sqrt(Dh))  # (B, H, T, Dh)
        a = a.transpose(1, 2).reshape(B, T, D)
        return self.output.LayerNorm(x + self.output.dropout(self.output.dense(a)))


class Intermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.hidden_dim)


class Output(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.act]
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, key_mask)
        h = self.output.dense(self.act(self.intermediate.dense(x)))  # (B, T, D)
        return self.output.LayerNorm(x + self.output.dropout(h))


class LayerStack(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))


class Pooler(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, D)


class ClsMLPHead(nn.Module):
    """RoBERTa's head: dropout, dense + tanh on the first token (<s>), dropout, out_proj."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.out_proj = nn.Linear(cfg.dim, cfg.num_labels)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(hidden[:, 0])))  # (B, D)
        return self.out_proj(self.dropout(x))  # (B, L)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = LayerStack(cfg)
        self.pooler = Pooler(cfg) if cfg.pooler else None
        self.classifier = None
        if cfg.num_labels and cfg.classifier == "pooler_linear":
            self.classifier = nn.Linear(cfg.dim, cfg.num_labels)
            self.classifier_dropout = nn.Dropout(cfg.hidden_dropout)
        elif cfg.num_labels:
            self.classifier = ClsMLPHead(cfg)

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) long; attention_mask (B, T) bool/0-1, True = real token -> last hidden (B, T, D)."""
        longest = input_ids.shape[1] + (0 if self.cfg.position_offset is None else self.cfg.position_offset + 1)
        if longest > self.cfg.max_positions:
            raise ValueError(f"{input_ids.shape[1]} tokens need position {longest - 1}, but the model has "
                             f"{self.cfg.max_positions} position embeddings: truncate the input")
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """-> classification logits (B, num_labels) (num_labels = 1: the regression score)."""
        if self.classifier is None:
            raise ValueError("Encoder.forward needs a classification head: build it with num_labels >= 1")
        hidden = self.forward_hidden(input_ids, attention_mask, token_type_ids)
        if self.cfg.classifier == "cls_mlp":
            return self.classifier(hidden)
        return self.classifier(self.classifier_dropout(self.pooler(hidden)))

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-example losses, number of examples) of a classification batch (data/classification.py):
        cross-entropy, or squared error for regression (num_labels = 1, STS-B), as HF's sequence classifiers."""
        logits = self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()  # (B, L)
        labels = batch["labels"]
        if self.cfg.num_labels == 1:
            total = F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
        else:
            total = F.cross_entropy(logits, labels, reduction="sum")
        return total, torch.tensor(labels.shape[0], device=labels.device)

    def materialize_buffers(self, device):
        """Nothing to recompute after loading (the decoder's rotary frequencies have no encoder counterpart)."""
