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
from giva.numerics import exact_fp32


class OsoraLinear(AdaptedLinear):
    method = "osora"
    trainable_names = ("osora_lambda_b", "osora_lambda_d")
    basis_names = ("osora_A", "osora_B", "osora_S")

    @classmethod
    @torch.no_grad()
    def layer_bases(cls, linear, cfg, name, grad):
        """The top-r' singular triplets of the layer's own W0 (exact SVD in fp32)."""
        r = min(cfg.r, linear.in_features, linear.out_features)
        with exact_fp32():
            U, S, Vh = torch.linalg.svd(linear.weight.float(), full_matrices=False)  # (m, k), (k,), (k, n)
        return {"osora_A": Vh[:r], "osora_B": U[:, :r], "osora_S": S[:r]}

    def __init__(self, linear: nn.Linear, cfg, name: str, shared=None, bases=None):
        """With `bases` (from layer_bases): W becomes W_res at once. Without: NaN bases and W untouched, for a
        file load to fill, then finish_load() subtracts."""
        super().__init__(linear, cfg)
        r = self.rank = min(cfg.r, self.in_features, self.out_features)
        self._bases_or_nan(bases, {"osora_A": (r, self.in_features), "osora_B": (self.out_features, r),
                                   "osora_S": (r,)})
        self.osora_lambda_b = nn.Parameter(self._new(self.out_features, fill=1.0))  # (m,)
        self.osora_lambda_d = nn.Parameter(self.osora_S.clone())  # (r',) starts at the singular values
        if bases is not None and self.weight.device.type != "meta":
            self.finish_load()

    @torch.no_grad()
    def finish_load(self):
        """W <- W0 - B diag(S_r) A, computed in fp32 and cast to the base dtype."""
        with exact_fp32():
            self.weight.copy_(self.weight.float() - (self.osora_B * self.osora_S) @ self.osora_A)

    def branch(self, x):
        B = self.osora_B * self.osora_lambda_b[:, None]  # (m, r'); lambda_d scales the activation, as GiVA's
        return F.linear(F.linear(x, self.osora_A) * self.osora_lambda_d, B)  # (..., r') -> (..., m)

    def delta_weight(self):
        return (self.osora_lambda_b[:, None] * self.osora_B * self.osora_lambda_d) @ self.osora_A  # (m, n)
