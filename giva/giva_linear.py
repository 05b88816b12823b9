"""GiVA: two trainable scaling vectors around frozen bases from the first-step gradient (methods.md 2).

    x (n) --> A (r' x n) --> * lambda_s (r') --> B (m x r') --> * lambda_o (m) --> dW x (m)

        dW = diag(lambda_o) . B . diag(lambda_s) . A

    A, B      frozen buffers from the SVD of G = dL/dW0 (giva/bases.py)
    lambda_s  trainable, init 1      lambda_o  trainable, init 0   ->   dW = 0 at init
    r'        the per-layer capped rank (bases.effective_rank)

Cost per token: r'(n + m) multiply-adds, as LoRA at rank r'. Trainable per layer: r' + m.
"""
import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import AdaptedLinear


class GivaLinear(AdaptedLinear):
    trainable_names = ("giva_lambda_o", "giva_lambda_s")
    basis_names = ("giva_A", "giva_B")

    def __init__(self, linear: nn.Linear, r: int, dropout: float = 0.0):
        """Bases start as NaN (so a forgotten init shows at once): the caller fills them from a gradient
        (set_bases) or from a file. The official code silently keeps random bases here (methods.md 9.10)."""
        super().__init__(linear, dropout)
        self.register_buffer("giva_A", self._new(r, self.in_features, fill=float("nan")))  # (r', n)
        self.register_buffer("giva_B", self._new(self.out_features, r, fill=float("nan")))  # (m, r')
        self.giva_lambda_s = nn.Parameter(self._new(r, fill=1.0))  # (r',)
        self.giva_lambda_o = nn.Parameter(self._new(self.out_features, fill=0.0))  # (m,)

    @torch.no_grad()
    def set_bases(self, A: torch.Tensor, B: torch.Tensor):
        self.giva_A.copy_(A)
        self.giva_B.copy_(B)

    def branch(self, x):
        A = self.giva_A * self.giva_lambda_s[:, None]  # (r', n): the vectors folded into the thin bases
        B = self.giva_B * self.giva_lambda_o[:, None]  # (m, r')
        return F.linear(F.linear(x, A), B)  # (..., r') -> (..., m)

    def delta_weight(self):
        return (self.giva_lambda_o[:, None] * self.giva_B * self.giva_lambda_s) @ self.giva_A  # (m, n)
