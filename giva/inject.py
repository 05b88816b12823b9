"""Put adapters into a model, take them out, and account for what trains. No method is named here: each
method's class (giva/methods.py) answers for itself through the protocol of giva/adapted_linear.py.

    needs_gradient(cfg)                 does the method's init need the probe's first-step gradient G?
    compute_bases(model, cfg, grads)    the data-dependent frozen bases of every target, before wrapping
                                        (GiVA: the SVD of each G, popped from `grads` as it goes; OSoRA: of W0)
    apply_adapters(model, cfg, bases)   freeze everything, wrap every target, train the adapters' tensors
                                        and the modules in cfg.modules_to_save (each parameter once)
    build_adapters(model, cfg)          the same without bases (placeholders): load_adapter fills them

Targets are matched by module name: a module whose dotted name equals a target or ends with "." + target;
modules inside cfg.modules_to_save are never targets (peft's rule). Afterwards exactly the tensors listed
in `model.adapter_trainable` require grad, and `model.adapter_config` records the config.
"""
import hashlib
from collections import Counter, defaultdict

import torch
from torch import nn

from giva.adapted_linear import AdaptedLinear
from giva.config import AdapterConfig
from giva.methods import METHODS


def _linear_summary(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return "none"
    counts = Counter(n.rsplit(".", 1)[-1] for n in names)
    example = {n.rsplit(".", 1)[-1]: n for n in reversed(names)}
    return ", ".join(f"{s} x{c} (e.g. {example[s]})" for s, c in counts.items())


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def find_modules_to_save(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """{name: module} of every module matched by a modules_to_save suffix (outermost matches only)."""
    found = {}
    for s in names:
        hits = [(n, m) for n, m in model.named_modules() if _matches(n, s)]
        if not hits:
            raise ValueError(f"adapter.modules_to_save: {s!r} matches no module of {type(model).__name__}")
        found.update(hits)
    return {n: m for n, m in found.items() if not any(n.startswith(o + ".") for o in found)}


def find_targets(model: nn.Module, targets: list[str], exclude: list[str] = ()) -> dict[str, nn.Linear]:
    """{name: module} of every nn.Linear whose name is a target or ends with "." + target, in model order,
    leaving out the modules inside those named in `exclude` (the modules trained fully)."""
    skip = tuple(find_modules_to_save(model, list(exclude)))
    found = {}
    for t in targets:
        hits = [(n, m) for n, m in model.named_modules()
                if _matches(n, t) and not any(n == s or n.startswith(s + ".") for s in skip)]
        if not hits:
            raise ValueError(f"target {t!r} matches no module; the nn.Linear layers are: {_linear_summary(model)}")
        for n, m in hits:
            if isinstance(m, AdaptedLinear):
                raise ValueError(f"target {t!r}: {n} already carries an adapter")
            if not isinstance(m, nn.Linear):
                raise ValueError(f"target {t!r} matches {n}, a {type(m).__name__}, not an nn.Linear; "
                                 f"the nn.Linear layers are: {_linear_summary(model)}")
            found[n] = m
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _targets(model: nn.Module, cfg: AdapterConfig) -> dict[str, nn.Linear]:
    return find_targets(model, cfg.targets, cfg.modules_to_save) if METHODS[cfg.method].wraps_targets else {}


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def needs_gradient(cfg: AdapterConfig) -> bool:
    """Whether the method's bases come from the probe's first-step gradient (only then is there a probe)."""
    return METHODS[cfg.method].needs_gradient


@torch.no_grad()
def compute_bases(model: nn.Module, cfg: AdapterConfig, grads: dict[str, torch.Tensor] | None = None,
                  share=None) -> dict:
    """{target name: {basis name: tensor}}: every target's data-dependent frozen bases, on its weight's device.

    For a method that needs_gradient, `grads` ({module name: (out, in)}, from estimate_gradients) must hold
    every target; each gradient is popped as soon as its layer's bases exist, so its memory goes as the
    loop advances. `share(names) -> names`: only those targets (one process's share of the SVDs)."""
    method = METHODS[cfg.method]
    targets = _targets(model, cfg)
    if share is not None:
        targets = {n: targets[n] for n in share(list(targets))}
    if method.needs_gradient:
        if grads is None:
            raise ValueError(f"method {cfg.method!r} needs grads=estimate_gradients(...) (or load_adapter to "
                             f"restore a trained one)")
        missing = [n for n in targets if n not in grads]
        if missing:
            raise ValueError(f"grads has no gradient for target layer(s) {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}; it has {len(grads)} entries, e.g. {list(grads)[:3]}")
    bases = {}
    for name, lin in targets.items():
        grad = grads.pop(name).to(lin.weight.device) if method.needs_gradient else None
        bases[name] = method.layer_bases(lin, cfg, name, grad)
        del grad
    return bases


def _check_untied(model: nn.Module, targets: dict[str, nn.Linear]):
    names_of = defaultdict(list)
    for n, p in model.named_parameters(remove_duplicate=False):
        names_of[id(p)].append(n)
    for name, lin in targets.items():
        tied = [n for n in names_of[id(lin.weight)] if n != f"{name}.weight"]
        if tied:
            raise ValueError(f"target {name}: its weight is tied to {tied}, so merging dW into it would change "
                             f"those too; untie the weights or drop the target")


def base_fingerprint(model: nn.Module, cfg: AdapterConfig, samples: int = 64) -> str:
    """A cheap identity of the base weights an adapter is built on (before any adapter touches them): sha256
    over each target weight's name, shape and `samples` evenly spaced values rounded to bf16 (so a bf16 and an
    fp32 load of one checkpoint agree); for a method that wraps nothing (full FT), over every parameter outside
    adapter.modules_to_save (a fresh head is random). "" on the meta device."""
    targets = _targets(model, cfg)
    if targets:
        weights = {f"{n}.weight": lin.weight for n, lin in targets.items()}
    else:
        skip = tuple(f"{n}." for n in find_modules_to_save(model, cfg.modules_to_save))
        weights = {n: p for n, p in model.named_parameters() if not n.startswith(skip)}
    digest = hashlib.sha256()
    for name in sorted(weights):
        w = weights[name].detach()
        if w.device.type == "meta":
            return ""
        picks = torch.arange(samples, device=w.device) * (w.numel() - 1) // (samples - 1)  # exact int64
        digest.update(f"{name}{tuple(w.shape)}".encode())
        digest.update(w.flatten()[picks].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_adapters(model: nn.Module, cfg: AdapterConfig, bases: dict | None = None) -> nn.Module:
    """Freeze everything, wrap every target of `cfg` in place (with `bases`, else placeholders), and choose
    what trains: the method's tensors and the modules in cfg.modules_to_save, each parameter once."""
    if hasattr(model, "adapter_config"):
        raise ValueError(f"the model already has {model.adapter_config.method!r} adapters")
    targets = _targets(model, cfg)
    _check_untied(model, targets)
    saved = find_modules_to_save(model, cfg.modules_to_save)
    fingerprint = base_fingerprint(model, cfg)  # of the pristine weights (OSoRA rewrites W0 as it attaches)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = METHODS[cfg.method].attach(model, cfg, targets, bases or {})
    for name, module in saved.items():
        trainable.update({f"{name}.{k}": p for k, p in module.named_parameters()})
    for p in trainable.values():
        p.requires_grad_(True)
    model.adapter_config = cfg
    model.adapter_base = fingerprint
    model.adapter_trainable = tuple(trainable)  # parameter names, each once, in order
    model.adapter_saved = tuple(f"{n}.{k}" for n, m in saved.items() for k, _ in m.named_parameters())
    return model


def apply_adapters(model: nn.Module, cfg: AdapterConfig, bases: dict | None = None) -> nn.Module:
    """build_adapters with the bases of compute_bases. `bases` may be left out on a model on the meta device
    (dry runs, parameter counts); a method with data-dependent bases refuses to run without them."""
    build_adapters(model, cfg, bases)
    unset = [n for n, layer in adapted_layers(model).items()
             if layer.basis_names and layer.weight.device.type != "meta" and n not in (bases or {})]
    if unset:
        raise ValueError(f"{len(unset)} layer(s), e.g. {unset[0]}, need the bases of compute_bases(model, cfg, "
                         f"grads) (or load_adapter to restore a trained adapter)")
    return model


def merge_adapters(model: nn.Module):
    """Fold every dW into its base weight (idempotent); the adapters stay, inactive until unmerge."""
    for layer in adapted_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module):
    for layer in adapted_layers(model).values():
        layer.unmerge()


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the optimizer must hold, each once: the method's trainables and the modules trained fully."""
    if not hasattr(model, "adapter_config"):
        raise ValueError("the model has no adapters: call apply_adapters or load_adapter first")
    return [model.get_parameter(n) for n in model.adapter_trainable]


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Raise unless the optimizer holds exactly the adapter tensors, each once, and those are all that require grad."""
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {id(p) for p in adapter_parameters(model)}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    extra = [names.get(id(p), "<not a model parameter>") for p in held if id(p) not in expected]
    missing = [names[i] for i in expected - {id(p) for p in held}]
    grad_on = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in expected]
    if extra or missing or grad_on or len(held) != len({id(p) for p in held}):
        raise RuntimeError(f"optimizer/adapter mismatch: non-adapter tensors in the optimizer {extra[:5]}, "
                           f"adapter tensors missing from it {missing[:5]}, non-adapter tensors that require "
                           f"grad {grad_on[:5]}, duplicates {len(held) - len({id(p) for p in held})}")


def count_parameters(model: nn.Module) -> dict:
    """{"total": every parameter (base + adapter, shared ones once), "trainable": what the method trains,
    "fully_trained": the modules_to_save parameters (a head: the paper's counts leave it out), "per_target":
    {target suffix: (layers, trainable)}, "ranks": {target suffix: (lowest, highest) rank its layers use}}.
    methods.md 7.4's percentages are trainable / total."""
    per, ranks = defaultdict(lambda: [0, 0]), defaultdict(set)
    for name, layer in adapted_layers(model).items():
        row = per[name.rsplit(".", 1)[-1]]
        row[0] += 1
        row[1] += sum(p.numel() for p in layer.trainable().values())
        ranks[name.rsplit(".", 1)[-1]].add(layer.rank)
    saved = set(model.adapter_saved)
    size = lambda names: sum(model.get_parameter(n).numel() for n in names)
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": size(n for n in model.adapter_trainable if n not in saved), "fully_trained": size(saved),
            "per_target": {k: tuple(v) for k, v in per.items()},
            "ranks": {k: (min(v), max(v)) for k, v in ranks.items()}}


def parameter_table(model: nn.Module) -> str:
    """A printable table: trainable parameters per target type, the modules trained fully, the totals."""
    cfg, c = model.adapter_config, count_parameters(model)
    pct = lambda k: f"{100 * k / c['total']:.3f}%"
    n_layers = sum(v[0] for v in c["per_target"].values())
    title = f"{cfg.method} (r={cfg.r}) on {n_layers} layers" if n_layers else f"{cfg.method}: every parameter trains"
    rank = lambda t: "-".join(map(str, sorted(set(c["ranks"][t]))))  # "64", or "32-64" when capped per layer
    lines = [title, f"{'target':<24}{'layers':>8}{'trainable':>16}{'% of model':>12}{'rank used':>11}"]
    lines += [f"{t:<24}{k:>8}{n:>16,}{pct(n):>12}{rank(t):>11}" for t, (k, n) in c["per_target"].items()]
    if c["fully_trained"]:
        lines.append(f"{'modules_to_save':<24}{len(cfg.modules_to_save):>8}{c['fully_trained']:>16,}"
                     f"{pct(c['fully_trained']):>12}   ({', '.join(cfg.modules_to_save)}: trained fully, not counted)")
    lines.append(f"{'trainable':<32}{c['trainable']:>16,}{pct(c['trainable']):>12}")
    lines.append(f"{'model (base+adapter)':<32}{c['total']:>16,}")
    return "\n".join(lines)
