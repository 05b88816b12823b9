"""OSoRA: train the top singular values and an output vector of W0 itself (methods.md 6).

    W0 = U S V^T (exact SVD, fp32)     r' = min(r, m, n)
    A = V[:, :r']^T (r', n), B = U[:, :r'] (m, r'), S_r = S[:r']       frozen buffers
    W_res = W0 - B diag(S_r) A                                          replaces the base weight
    dW = diag(lambda_b) . B . diag(lambda_d) . A,  lambda_b = 1 (m), lambda_d = S_r (r')   trainable

At init W_res + dW = W0 up to the rounding of W_res to the base dtype. Deliberate differences from the
official code: the SVD runs on the weight's own device (not hard-coded CUDA), and A, B and S_r are
persistent bases stored in the adapter file, so a reload rebuilds W_res from the base model's W0 without
recomputing an SVD (which could rotate a degenerate subspace).
"""
import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import AdaptedLinear
from giva.bases import exact_fp32


class OsoraLinear(AdaptedLinear):
    trainable_names = ("osora_lambda_b", "osora_lambda_d")
    basis_names = ("osora_A", "osora_B", "osora_S")

    def __init__(self, linear: nn.Linear, r: int, dropout: float = 0.0):
        """Bases NaN and W untouched: follow with init_from_weight() or a file load + finish_load()."""
        super().__init__(linear, dropout)
        r = min(r, self.in_features, self.out_features)
        nan = float("nan")
        self.register_buffer("osora_A", self._new(r, self.in_features, fill=nan))  # (r', n)
        self.register_buffer("osora_B", self._new(self.out_features, r, fill=nan))  # (m, r')
        self.register_buffer("osora_S", self._new(r, fill=nan))  # (r',) the initial singular values
        self.osora_lambda_b = nn.Parameter(self._new(self.out_features, fill=1.0))  # (m,)
        self.osora_lambda_d = nn.Parameter(self._new(r, fill=nan))  # (r',)

    @torch.no_grad()
    def init_from_weight(self):
        r = self.osora_S.shape[0]
        with exact_fp32():
            U, S, Vh = torch.linalg.svd(self.weight.float(), full_matrices=False)  # (m, k), (k,), (k, n)
        self.osora_A.copy_(Vh[:r])
        self.osora_B.copy_(U[:, :r])
        self.osora_S.copy_(S[:r])
        self.osora_lambda_d.copy_(S[:r])
        self._subtract_top()

    @torch.no_grad()
    def _subtract_top(self):
        """W <- W0 - B diag(S_r) A, computed in fp32 and cast to the base dtype."""
        with exact_fp32():
            self.weight.copy_(self.weight.float() - (self.osora_B * self.osora_S) @ self.osora_A)

    def finish_load(self):
        self._subtract_top()

    def branch(self, x):
        A = self.osora_A * self.osora_lambda_d[:, None]  # (r', n): the vectors folded into the thin bases
        B = self.osora_B * self.osora_lambda_b[:, None]  # (m, r')
        return F.linear(F.linear(x, A), B)  # (..., r') -> (..., m)

    def delta_weight(self):
        return (self.osora_lambda_b[:, None] * self.osora_B * self.osora_lambda_d) @ self.osora_A  # (m, n)
