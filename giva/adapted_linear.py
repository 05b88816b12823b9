"""The one adapted-linear protocol every method implements.

An AdaptedLinear replaces a target nn.Linear in place. It keeps the linear's `weight` and `bias`
Parameter objects under the same names, so the base model's state-dict keys do not change, and adds

    trainable  nn.Parameters named in `trainable_names` (GiVA's lambda_o, lambda_s; LoRA's A, B; ...)
    bases      persistent per-layer frozen buffers named in `basis_names` (GiVA's A, B; OSoRA's U_r, V_r)
    shared     (VeRA, RandLoRA) one SharedBases module referenced by every layer, stored once per file

    y = W x + b + branch(dropout(x))            branch computed in fp32 from thin matmuls, never from dW

What a method owns, as the rest of giva/ sees it (inject.py and adapter_file.py name no method):
    method            its AdapterConfig.method name
    needs_gradient    whether its bases come from the probe's first-step gradient G (only then does the probe run)
    wraps_targets     whether it wraps the adapter.targets (every method but full fine-tuning)
    check_config(cfg) the config fields it needs
    layer_bases(linear, cfg, name, grad) -> {basis name: tensor}   the data-dependent frozen tensors, computed
                      before the layer is wrapped (GiVA: SVD of G; OSoRA: SVD of W0; the others: none)
    shared_bases(cfg, m_max, n_max, device) -> SharedBases | None  one copy for every layer (VeRA, RandLoRA)
    __init__(linear, cfg, name, shared, bases)   bases None: placeholders that a file load fills, then finish_load()
    attach(model, cfg, targets, bases) -> {parameter name: parameter}   wraps every target; the trainable tensors
    peft_type         peft's name for the method where peft has it (else None); then peft_config(cfg), the
                      method's fields of peft's adapter_config.json, peft_tensors(), one layer's tensors under
                      peft's names, and peft_shared(shared), the shared bases under theirs (export.py --peft)
giva/full.py implements the same class-level members for full fine-tuning, which wraps nothing.

The scaling vectors of GiVA, VeRA and OSoRA (and LoRA's scalar) are folded into the thin bases before the
matmuls, e.g. GiVA's branch is x -> (A * lambda_s[:, None]) -> (B * lambda_o[:, None]): the same dW x, but the
elementwise products cost r'(n + m) instead of tokens * (r' + m), and no (tokens, m) activation is kept
for lambda_o's gradient. Under autocast both matmuls then run in bf16 like the base layer's.

Adapter tensors are fp32 whatever the base dtype: the net effect of the official code's dtype pipeline
(methods.md 1). x is cast to fp32 on the branch only (not under autocast, where the cast would change nothing),
and the sum is cast back to x's dtype.
Deliberate difference: the official code stores the bases of bf16 runs as bf16-rounded values; we keep
them at full fp32 precision.

merge() folds dW into W (sum in fp32, then cast to W's dtype); unmerge() subtracts the same dW. Both
are idempotent. The round trip is exact in fp32 only.
"""
import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_DTYPE = torch.float32


class SharedBases(nn.Module):
    """Frozen bases shared by every layer of a model (VeRA, RandLoRA).

    Every adapted layer registers this same module as its child `shared`, so `model.to(device)` moves
    the one copy. The buffers are non-persistent: the adapter file stores them once, not per layer.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t, persistent=False)


def replace_module(model: nn.Module, name: str, new: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


class AdaptedLinear(nn.Module):
    method: str = ""
    needs_gradient = False
    wraps_targets = True
    trainable_names: tuple[str, ...] = ()
    basis_names: tuple[str, ...] = ()
    peft_type: str | None = None

    @classmethod
    def check_config(cls, cfg):
        if not cfg.targets:
            cfg.bad("targets", f"method {cls.method!r} needs at least one target module name")

    @classmethod
    def layer_bases(cls, linear: nn.Linear, cfg, name: str, grad: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def shared_bases(cls, cfg, m_max: int, n_max: int, device) -> SharedBases | None:
        return None

    @classmethod
    def attach(cls, model: nn.Module, cfg, targets: dict[str, nn.Linear], bases: dict) -> dict[str, nn.Parameter]:
        """Replace every target by this method's layer (bases[name] filled, else placeholders); the trainables."""
        lin0 = next(iter(targets.values()))
        m_max = max(lin.out_features for lin in targets.values())
        n_max = max(lin.in_features for lin in targets.values())
        shared = cls.shared_bases(cfg, m_max, n_max, lin0.weight.device)
        trainable = {}
        for name, lin in targets.items():
            layer = cls(lin, cfg, name, shared, bases.get(name))
            replace_module(model, name, layer)
            trainable.update({f"{name}.{k}": p for k, p in layer.trainable().items()})
        return trainable

    def __init__(self, linear: nn.Linear, cfg, shared: SharedBases | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.shared = shared
        self.merged = False
        self.rank = cfg.r  # the layer's rank; a method that caps it per layer (GiVA, OSoRA) sets what it used

    def _new(self, *shape, fill=None) -> torch.Tensor:
        """An fp32 adapter tensor on the weight's device (meta stays meta), filled if asked."""
        t = torch.empty(*shape, dtype=ADAPTER_DTYPE, device=self.weight.device)
        return t if fill is None else t.fill_(fill)

    def _bases_or_nan(self, bases: dict | None, shapes: dict[str, tuple]):
        """Register each basis buffer from `bases`, or NaN-filled (so a forgotten fill shows at once) for a file
        load to overwrite. The official code silently keeps random bases there (methods.md 9.10)."""
        for name, shape in shapes.items():
            value = self._new(*shape, fill=float("nan")) if bases is None else bases[name].to(self.weight.device,
                                                                                              ADAPTER_DTYPE)
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"basis {name} has shape {tuple(value.shape)}, the layer needs {tuple(shape)}")
            self.register_buffer(name, value.contiguous())

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """dW x for fp32 x (..., in) -> (..., out), through thin matmuls."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """dW as an fp32 (out, in) matrix."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:
            return y
        # Under autocast the branch's matmuls run in the autocast dtype whatever x's dtype, so the fp32 copy
        # of x would change no result and only cost memory traffic: skip it there.
        if not torch.is_autocast_enabled(x.device.type):
            x_adapter = x.to(ADAPTER_DTYPE)
        else:
            x_adapter = x
        return (y + self.branch(self.dropout(x_adapter))).to(x.dtype)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight.copy_(self.weight.float() + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.copy_(self.weight.float() - self.delta_weight())
            self.merged = False

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: getattr(self, n) for n in self.trainable_names}

    def bases(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.basis_names}

    @classmethod
    def peft_config(cls, cfg) -> dict:
        raise NotImplementedError

    def peft_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def peft_shared(shared: SharedBases | None) -> dict[str, torch.Tensor]:
        return {}

    def finish_load(self):
        """Called once after a file filled this freshly built layer's bases (OSoRA rebuilds W_res)."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"
