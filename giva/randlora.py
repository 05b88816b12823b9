"""RandLoRA: full-rank updates from shared random bases and two trainable matrices (methods.md 4).

Per layer: d = min(m, n), D = max(m, n), N = ceil(d / r) bases.

    A_sh (r, 1, d_max), B_sh (D_max, N_max, r)        shared, frozen, each divided by its global std
    lambda (r, N) init 0,  gamma (N, d) init 1/max(N, d)                                    trainable
    A~ = (lambda[:, :, None] * A_sh[:, :, :d] * gamma[None]).flatten  (rN, d)    row    i*N + k
    B~ = B_sh[:D, :N, :].flatten                                      (D, Nr)    column k*r + i
    dW = s B~ A~  (n <= m)     or     s (B~ A~)^T  (n > m)

The two flattening orders pair column c of B~ (basis c // r, rank c % r) with row c of A~ (rank c // N,
basis c % N): the code's order, kept so the maths matches peft and the official repo bit for bit
(equal in distribution to the paper's sum over k of B_k diag(lambda[:, k]) A diag(gamma[k])).
s = alpha / r (peft) or alpha / (r sqrt(N)) (official repo, `randlora_sqrt_n`). The shared bases are drawn
from a CPU generator seeded with adapter.randlora_seed (peft's projection_prng_key). Deliberate difference
from the peft fork: the bases are drawn in fp32 (as the official repo), not bf16.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import ADAPTER_DTYPE, AdaptedLinear, SharedBases


def n_bases(r: int, m: int, n: int) -> int:
    return math.ceil(min(m, n) / r)


def randlora_shared_bases(r: int, m_max: int, n_max: int, seed: int, device) -> SharedBases:
    """peft's draw order: A first, then N_max blocks of B one after another, from one CPU generator."""
    d_max, D_max, N_max = min(m_max, n_max), max(m_max, n_max), n_bases(r, m_max, n_max)
    if torch.device(device).type == "meta":
        A, B = torch.empty(r, 1, d_max, device="meta"), torch.empty(D_max, N_max, r, device="meta")
    else:
        g = torch.Generator(device="cpu").manual_seed(seed)

        def draw(*shape):  # Kaiming-uniform, a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            return nn.init.kaiming_uniform_(torch.empty(shape, dtype=ADAPTER_DTYPE), a=math.sqrt(5), generator=g)

        A = draw(r, 1, d_max)  # (r, 1, d_max)
        B = torch.cat([draw(D_max, 1, r) for _ in range(N_max)], dim=1)  # (D_max, N_max, r)
        A, B = A / A.std(), B / B.std()
    return SharedBases({"randlora_A": A.to(device), "randlora_B": B.to(device)})


class RandLoraLinear(AdaptedLinear):
    method = "randlora"
    trainable_names = ("randlora_lambda", "randlora_gamma")
    peft_type = "RANDLORA"

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.alpha is None:
            cfg.bad("alpha", "RandLoRA needs an explicit alpha (scaling = alpha / r)")

    @classmethod
    def peft_config(cls, cfg):
        if cfg.randlora_sqrt_n:
            cfg.bad("randlora_sqrt_n", "peft's RandLoRA scales by alpha / r: a run with the official "
                                       "alpha / (r sqrt(N)) has no peft format (export the merged model)")
        return {"r": cfg.r, "randlora_alpha": cfg.alpha, "projection_prng_key": cfg.randlora_seed,
                "save_projection": True, "randlora_dropout": cfg.dropout}

    def peft_tensors(self):
        return {"randlora_lambda": self.randlora_lambda, "randlora_gamma": self.randlora_gamma}

    @staticmethod
    def peft_shared(shared):
        return {"randlora_A": shared.randlora_A, "randlora_B": shared.randlora_B}  # (r, 1, d_max), (D_max, N_max, r)

    @classmethod
    def shared_bases(cls, cfg, m_max, n_max, device):
        return randlora_shared_bases(cfg.r, m_max, n_max, cfg.randlora_seed, device)

    def __init__(self, linear: nn.Linear, cfg, name: str, shared: SharedBases, bases=None):
        super().__init__(linear, cfg, shared)
        r, _, d_max = shared.randlora_A.shape
        m, n = self.out_features, self.in_features
        self.d, self.D, self.N = min(m, n), max(m, n), n_bases(r, m, n)
        D_max, N_max, _ = shared.randlora_B.shape
        if self.d > d_max or self.D > D_max or self.N > N_max:
            raise ValueError(f"RandLoRA shared bases A {tuple(shared.randlora_A.shape)}, "
                             f"B {tuple(shared.randlora_B.shape)} are too small for a layer of shape ({m}, {n})")
        self.scaling = cfg.alpha / (r * math.sqrt(self.N)) if cfg.randlora_sqrt_n else cfg.alpha / r
        self.randlora_lambda = nn.Parameter(self._new(r, self.N, fill=0.0))  # (r, N)
        self.randlora_gamma = nn.Parameter(self._new(self.N, self.d, fill=1.0 / max(self.N, self.d)))  # (N, d)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        A = self.shared.randlora_A[:, :, :self.d]  # (r, 1, d)
        B = self.shared.randlora_B[:self.D, :self.N, :]  # (D, N, r)
        A_t = (self.randlora_lambda[:, :, None] * A * self.randlora_gamma[None]).flatten(0, 1)  # (rN, d)
        return A_t, B.flatten(1)  # (rN, d), (D, Nr)

    def branch(self, x):
        A_t, B_t = self._factors()
        if self.in_features <= self.out_features:  # d = n: x -> A~ x (rN) -> B~ (m)
            return F.linear(F.linear(x, A_t), B_t) * self.scaling
        return F.linear(F.linear(x, B_t.T), A_t.T) * self.scaling  # D = n: x -> B~^T x (Nr) -> A~^T (m)

    def delta_weight(self):
        A_t, B_t = self._factors()
        dW = B_t @ A_t  # (D, d)
        return (dW if self.in_features <= self.out_features else dW.T) * self.scaling  # (m, n)
