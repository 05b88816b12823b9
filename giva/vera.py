"""VeRA: one shared pair of random bases for the whole model, two trainable vectors per layer (methods.md 3).

    dW = diag(lambda_b) . B[:m, :] . diag(lambda_d) . A[:, :n]

    A (r, n_max), B (m_max, r)   shared, frozen; n_max, m_max = largest in/out features over the targets
    lambda_b (m) init 0, lambda_d (r) init d_initial.   r is not capped by the layer size.

The bases are drawn exactly as peft does: a CPU torch.Generator seeded with adapter.vera_seed (peft's
projection_prng_key), A first then B, each U(-b, b) with b = sqrt(3) sqrt(2) / sqrt(fan_in), fan_in = the
tensor's second dimension.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import ADAPTER_DTYPE, AdaptedLinear, SharedBases


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return torch.empty(shape, dtype=ADAPTER_DTYPE).uniform_(-bound, bound, generator=generator)


def vera_shared_bases(r: int, m_max: int, n_max: int, seed: int, device) -> SharedBases:
    if torch.device(device).type == "meta":
        A, B = torch.empty(r, n_max, device="meta"), torch.empty(m_max, r, device="meta")
    else:
        g = torch.Generator(device="cpu").manual_seed(seed)
        A = _kaiming_uniform((r, n_max), g)  # (r, n_max)
        B = _kaiming_uniform((m_max, r), g)  # (m_max, r)
    return SharedBases({"vera_A": A.to(device), "vera_B": B.to(device)})


class VeraLinear(AdaptedLinear):
    method = "vera"
    trainable_names = ("vera_lambda_b", "vera_lambda_d")
    peft_type = "VERA"

    @classmethod
    def peft_config(cls, cfg):  # save_projection: the bases travel in the file, not only their seed
        return {"r": cfg.r, "d_initial": cfg.d_initial, "projection_prng_key": cfg.vera_seed, "save_projection": True,
                "vera_dropout": cfg.dropout}

    def peft_tensors(self):
        return {"vera_lambda_b": self.vera_lambda_b, "vera_lambda_d": self.vera_lambda_d}

    @staticmethod
    def peft_shared(shared):
        return {"vera_A": shared.vera_A, "vera_B": shared.vera_B}  # (r, n_max), (m_max, r), as peft's

    @classmethod
    def shared_bases(cls, cfg, m_max, n_max, device):
        return vera_shared_bases(cfg.r, m_max, n_max, cfg.vera_seed, device)

    def __init__(self, linear: nn.Linear, cfg, name: str, shared: SharedBases, bases=None):
        super().__init__(linear, cfg, shared)
        r, n_max = shared.vera_A.shape
        if n_max < self.in_features or shared.vera_B.shape[0] < self.out_features:
            raise ValueError(f"VeRA shared bases A {tuple(shared.vera_A.shape)}, B {tuple(shared.vera_B.shape)} "
                             f"are too small for a layer of shape ({self.out_features}, {self.in_features})")
        self.vera_lambda_b = nn.Parameter(self._new(self.out_features, fill=0.0))  # (m,)
        self.vera_lambda_d = nn.Parameter(self._new(r, fill=cfg.d_initial))  # (r,)

    def _sliced(self):
        return self.shared.vera_A[:, :self.in_features], self.shared.vera_B[:self.out_features]  # (r, n), (m, r)

    def branch(self, x):
        A, B = self._sliced()
        B = B * self.vera_lambda_b[:, None]  # (m, r); lambda_d scales the activation, as GiVA's lambda_s
        return F.linear(F.linear(x, A) * self.vera_lambda_d, B)  # (..., r) -> (..., m)

    def delta_weight(self):
        A, B = self._sliced()
        return (self.vera_lambda_b[:, None] * B * self.vera_lambda_d) @ A  # (m, n)
