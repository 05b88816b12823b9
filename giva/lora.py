"""LoRA and rsLoRA (methods.md 5.1).

    dW = s B A,   A (r, n) ~ U(-1/sqrt(n), 1/sqrt(n)) (Kaiming-uniform, a = sqrt(5)),  B (m, r) = 0
    s = alpha / r, or alpha / sqrt(r) with rsLoRA.   Both A and B train: r (n + m) per layer.

A is drawn from a generator seeded per layer from (adapter.lora_seed, module name) (giva/numerics.py), not
from the global RNG as peft does, so the init does not depend on layer order or on what ran before.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from giva.adapted_linear import AdaptedLinear
from giva.numerics import layer_seed


class LoraLinear(AdaptedLinear):
    method = "lora"
    trainable_names = ("lora_A", "lora_B")
    peft_type = "LORA"

    @classmethod
    def peft_config(cls, cfg):
        return {"r": cfg.r, "lora_alpha": cfg.alpha, "use_rslora": cfg.use_rslora, "lora_dropout": cfg.dropout}

    def peft_tensors(self):
        return {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}  # peft's nn.Linear(n, r), (r, m)

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        if cfg.alpha is None:
            cfg.bad("alpha", "LoRA needs an explicit alpha (scaling = alpha / r)")

    def __init__(self, linear: nn.Linear, cfg, name: str, shared=None, bases=None):
        super().__init__(linear, cfg)
        r = cfg.r
        self.scaling = cfg.alpha / math.sqrt(r) if cfg.use_rslora else cfg.alpha / r
        self.lora_A = nn.Parameter(self._new(r, self.in_features))  # (r, n)
        self.lora_B = nn.Parameter(self._new(self.out_features, r, fill=0.0))  # (m, r)
        if self.lora_A.device.type != "meta":
            g = torch.Generator().manual_seed(layer_seed(cfg.lora_seed, name))
            A = nn.init.kaiming_uniform_(torch.empty(self.lora_A.shape), a=math.sqrt(5), generator=g)
            with torch.no_grad():
                self.lora_A.copy_(A)

    def branch(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B * self.scaling)  # (..., r) -> (..., m)

    def delta_weight(self):
        return (self.lora_B @ self.lora_A) * self.scaling  # (m, n)
