"""LoRA and rsLoRA (methods.md 5.1).

    dW = s B A,   A (r, n) ~ U(-1/sqrt(n), 1/sqrt(n)) (Kaiming-uniform, a = sqrt(5)),  B (m, r) = 0
    s = alpha / r, or alpha / sqrt(r) with rsLoRA.   Both A and B train: r (n + m) per layer.

A is drawn from a generator seeded per layer (giva.bases.layer_seed), not from the global RNG as peft
does, so the init does not depend on layer order or on what ran before.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import AdaptedLinear


class LoraLinear(AdaptedLinear):
    trainable_names = ("lora_A", "lora_B")

    def __init__(self, linear: nn.Linear, r: int, alpha: float, use_rslora: bool = False, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(linear, dropout)
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(self._new(r, self.in_features))  # (r, n)
        self.lora_B = nn.Parameter(self._new(self.out_features, r, fill=0.0))  # (m, r)
        if self.lora_A.device.type != "meta":
            A = nn.init.kaiming_uniform_(torch.empty(self.lora_A.shape), a=math.sqrt(5), generator=generator)
            with torch.no_grad():
                self.lora_A.copy_(A)

    def branch(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B * self.scaling)  # (..., r) -> (..., m)

    def delta_weight(self):
        return (self.lora_B @ self.lora_A) * self.scaling  # (m, n)
