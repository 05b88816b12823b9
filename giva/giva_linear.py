"""GiVA: two trainable scaling vectors around frozen bases from the first-step gradient (methods.md 2).

    x (n) --> A (r' x n) --> * lambda_s (r') --> B (m x r') --> * lambda_o (m) --> dW x (m)

        dW = diag(lambda_o) . B . diag(lambda_s) . A

    A, B      frozen buffers from the SVD of G = dL/dW0, the probe's first-step gradient (giva_bases below)
    lambda_s  trainable, init 1      lambda_o  trainable, init 0   ->   dW = 0 at init
    r'        the per-layer capped rank (effective_rank)

The bases (methods.md 2.3):

    (U, S, V) = svd_lowrank(G, q = min(4 r', m, n), niter = 4)      G: (m, n) fp32
    A = V[:, :r']^T                                  (r', n)  top-r' right singular vectors, for every init
    B = U[:, :r'] (topsv) | U[:, r':2r'] (secsv) | Q of QR(randn(m, r')) (rand)          (m, r')

svd_lowrank and Rand-B's Gaussian run in an RNG seeded from (adapter.svd_seed, module name)
(giva/numerics.py), with TF32 off.

Cost per token: r'(n + m) multiply-adds, as LoRA at rank r'. Trainable per layer: r' + m.
"""
import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import AdaptedLinear
from giva.numerics import exact_fp32, layer_seed, seeded_rng

INITS = ("topsv", "secsv", "rand")  # the paper's TopSV-B, SecSV-B, Rand-B (code: VrUr, VrU2r, Vr)


def effective_rank(r: int, m: int, n: int, init: str) -> int:
    """The official per-layer cap: SecSV-B needs 2r' singular vectors, the others r'."""
    return min(r, min(m, n) // 2) if init == "secsv" else min(r, m, n)


@torch.no_grad()
def giva_bases(G: torch.Tensor, r: int, init: str, *, seed: int, q: int | None = None,
               niter: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, n) and B (m, r) for an already capped rank r (see effective_rank), in fp32 on G's device."""
    G = G.float()
    m, n = G.shape
    need = 2 * r if init == "secsv" else r
    q = min(4 * r if q is None else q, m, n)
    if q < need:
        raise ValueError(f"svd q={q} is smaller than the {need} singular vectors init={init!r} needs at r={r} "
                         f"for a ({m}, {n}) gradient")
    with seeded_rng(seed, G.device), exact_fp32():
        U, _, V = torch.svd_lowrank(G, q=q, niter=niter)  # (m, q), (q,), (n, q)
        A = V[:, :r].T.contiguous()  # (r, n)
        if init == "topsv":
            B = U[:, :r]
        elif init == "secsv":
            B = U[:, r:2 * r]
        else:  # rand
            B, _ = torch.linalg.qr(torch.randn(m, r, device=G.device))  # reduced QR: (m, r)
    return A, B.contiguous()


class GivaLinear(AdaptedLinear):
    method = "giva"
    needs_gradient = True
    trainable_names = ("giva_lambda_o", "giva_lambda_s")
    basis_names = ("giva_A", "giva_B")

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.init not in INITS:
            cfg.bad("init", f"must be one of {', '.join(INITS)}")

    @classmethod
    def layer_bases(cls, linear, cfg, name, grad):
        """A and B from the SVD of this layer's gradient G (out, in), on G's device."""
        if tuple(grad.shape) != tuple(linear.weight.shape):
            raise ValueError(f"gradient for {name} has shape {tuple(grad.shape)}, its weight "
                             f"{tuple(linear.weight.shape)}")
        r = effective_rank(cfg.r, linear.out_features, linear.in_features, cfg.init)
        A, B = giva_bases(grad, r, cfg.init, seed=layer_seed(cfg.svd_seed, name), q=cfg.svd_q, niter=cfg.svd_niter)
        return {"giva_A": A, "giva_B": B}

    def __init__(self, linear: nn.Linear, cfg, name: str, shared=None, bases=None):
        super().__init__(linear, cfg)
        r = self.rank = effective_rank(cfg.r, self.out_features, self.in_features, cfg.init)
        self._bases_or_nan(bases, {"giva_A": (r, self.in_features), "giva_B": (self.out_features, r)})
        self.giva_lambda_s = nn.Parameter(self._new(r, fill=1.0))  # (r',)
        self.giva_lambda_o = nn.Parameter(self._new(self.out_features, fill=0.0))  # (m,)

    def branch(self, x):
        # lambda_s scales the thin activation, not A: A stays a frozen operand, so the backward pass needs no
        # (r', n) weight-gradient product over every token (only dx); lambda_o is folded into B, whose
        # product g^T h its own gradient needs anyway.
        B = self.giva_B * self.giva_lambda_o[:, None]  # (m, r')
        return F.linear(F.linear(x, self.giva_A) * self.giva_lambda_s, B)  # (..., r') -> (..., m)

    def delta_weight(self):
        return (self.giva_lambda_o[:, None] * self.giva_B * self.giva_lambda_s) @ self.giva_A  # (m, n)
