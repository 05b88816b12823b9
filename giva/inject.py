"""Put adapters into a model, take them out, and account for what trains.

Targets are matched by module name: a module whose dotted name equals a target or ends with "." + target.
apply_adapters freezes every parameter, replaces each target nn.Linear by its method's AdaptedLinear,
initialises it (GiVA from the gradients, OSoRA from W0, the others from seeds), and records the config
as `model.adapter_config`. Afterwards exactly the adapter tensors require grad.
"""
from collections import Counter, defaultdict

import torch
from torch import nn

from giva.adapted_linear import AdaptedLinear
from giva.bases import effective_rank, giva_bases, layer_seed
from giva.config import AdapterConfig
from giva.giva_linear import GivaLinear
from giva.lora import LoraLinear
from giva.osora import OsoraLinear
from giva.randlora import RandLoraLinear, randlora_shared_bases
from giva.vera import VeraLinear, vera_shared_bases


def _linear_summary(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return "none"
    counts = Counter(n.rsplit(".", 1)[-1] for n in names)
    example = {n.rsplit(".", 1)[-1]: n for n in reversed(names)}
    return ", ".join(f"{s} x{c} (e.g. {example[s]})" for s, c in counts.items())


def find_targets(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """{name: module} of every nn.Linear whose name is a target or ends with "." + target, in model order."""
    found = {}
    for t in targets:
        hits = [(n, m) for n, m in model.named_modules() if n == t or n.endswith("." + t)]
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


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def _replace(model: nn.Module, name: str, new: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def build_adapters(model: nn.Module, cfg: AdapterConfig) -> dict[str, AdaptedLinear]:
    """Freeze the model and wrap every target, before any data-dependent init (GiVA and OSoRA bases
    are left unset: apply_adapters fills them from data, load_adapter from a file)."""
    if hasattr(model, "adapter_config"):
        raise ValueError(f"the model already has {model.adapter_config.method!r} adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        model.adapter_config = cfg
        return {}
    targets = find_targets(model, cfg.targets)
    names_of = defaultdict(list)
    for n, p in model.named_parameters(remove_duplicate=False):
        names_of[id(p)].append(n)
    for name, lin in targets.items():
        tied = [n for n in names_of[id(lin.weight)] if n != f"{name}.weight"]
        if tied:
            raise ValueError(f"target {name}: its weight is tied to {tied}, so merging dW into it would change "
                             f"those too; untie the weights or drop the target")
    device = next(iter(targets.values())).weight.device
    m_max = max(lin.out_features for lin in targets.values())
    n_max = max(lin.in_features for lin in targets.values())
    shared = None
    if cfg.method == "vera":
        shared = vera_shared_bases(cfg.r, m_max, n_max, cfg.seed, device)
    elif cfg.method == "randlora":
        shared = randlora_shared_bases(cfg.r, m_max, n_max, cfg.seed, device)
    layers = {}
    for name, lin in targets.items():
        m, n = lin.out_features, lin.in_features
        if cfg.method == "giva":
            layer = GivaLinear(lin, effective_rank(cfg.r, m, n, cfg.init), cfg.dropout)
        elif cfg.method == "vera":
            layer = VeraLinear(lin, shared, cfg.d_initial, cfg.dropout)
        elif cfg.method == "osora":
            layer = OsoraLinear(lin, cfg.r, cfg.dropout)
        elif cfg.method == "randlora":
            layer = RandLoraLinear(lin, shared, cfg.alpha, cfg.randlora_sqrt_n, cfg.dropout)
        else:
            g = torch.Generator().manual_seed(layer_seed(cfg.seed, name))
            layer = LoraLinear(lin, cfg.r, cfg.alpha, cfg.use_rslora, cfg.dropout, generator=g)
        _replace(model, name, layer)
        layers[name] = layer
    model.adapter_config = cfg
    return layers


def apply_adapters(model: nn.Module, cfg: AdapterConfig, grads: dict[str, torch.Tensor] | None = None):
    """Wrap and initialise every target of `cfg`, in place.

    GiVA needs `grads` ({module name: (out, in)}, from estimate_gradients); each gradient is popped from
    the dict as soon as its layer's bases exist, so their memory goes as the loop advances. On a model on
    the meta device (dry runs, parameter counts) no gradients are needed and nothing is initialised.
    """
    targets = {} if cfg.method == "full" else find_targets(model, cfg.targets)
    dry = bool(targets) and all(lin.weight.device.type == "meta" for lin in targets.values())
    if cfg.method == "giva" and not dry:  # check the gradients before the model is touched
        if grads is None:
            raise ValueError("GiVA needs grads=estimate_gradients(...) (or use load_adapter to restore a trained one)")
        missing = [n for n in targets if n not in grads]
        if missing:
            raise ValueError(f"grads has no gradient for target layer(s) {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                             f"it has {len(grads)} entries, e.g. {list(grads)[:3]}")
        for n, lin in targets.items():
            if grads[n].shape != lin.weight.shape:
                raise ValueError(f"gradient for {n} has shape {tuple(grads[n].shape)}, its weight {tuple(lin.weight.shape)}")
    layers = build_adapters(model, cfg)
    if cfg.method == "giva" and not dry:
        for name, layer in layers.items():
            G = grads.pop(name).to(layer.weight.device)
            A, B = giva_bases(G, layer.giva_A.shape[0], cfg.init, seed=layer_seed(cfg.seed, name),
                              q=cfg.svd_q, niter=cfg.svd_niter)
            del G
            layer.set_bases(A, B)
    if cfg.method == "osora" and not dry:
        for layer in layers.values():
            layer.init_from_weight()


def merge_adapters(model: nn.Module):
    """Fold every dW into its base weight (idempotent); the adapters stay, inactive until unmerge."""
    for layer in adapted_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module):
    for layer in adapted_layers(model).values():
        layer.unmerge()


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the optimizer must hold: the adapters' trainable tensors (every parameter for "full")."""
    if not hasattr(model, "adapter_config"):
        raise ValueError("the model has no adapters: call apply_adapters or load_adapter first")
    if model.adapter_config.method == "full":
        return list(model.parameters())
    return [p for layer in adapted_layers(model).values() for p in layer.trainable().values()]


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Raise unless the optimizer holds exactly the adapter tensors and those are all that require grad."""
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
    """{"total": every parameter (base + adapter, shared ones once), "trainable": adapter parameters,
    "per_target": {target suffix: (layers, trainable)}}; percentages in methods.md 7.4 are trainable / total."""
    total = sum(p.numel() for p in model.parameters())
    per = defaultdict(lambda: [0, 0])
    for name, layer in adapted_layers(model).items():
        row = per[name.rsplit(".", 1)[-1]]
        row[0] += 1
        row[1] += sum(p.numel() for p in layer.trainable().values())
    trainable = sum(p.numel() for p in adapter_parameters(model))
    return {"total": total, "trainable": trainable, "per_target": {k: tuple(v) for k, v in per.items()}}


def parameter_table(model: nn.Module) -> str:
    """A printable table: trainable parameters per target type and in total, absolute and % of the model."""
    cfg, c = model.adapter_config, count_parameters(model)
    pct = lambda k: f"{100 * k / c['total']:.3f}%"
    title = ("full fine-tuning: every parameter trains" if cfg.method == "full" else
             f"{cfg.method} (r={cfg.r}) on {sum(v[0] for v in c['per_target'].values())} layers")
    lines = [title,
             f"{'target':<16}{'layers':>8}{'trainable':>16}{'% of model':>12}"]
    lines += [f"{t:<16}{k:>8}{n:>16,}{pct(n):>12}" for t, (k, n) in c["per_target"].items()]
    lines.append(f"{'trainable':<24}{c['trainable']:>16,}{pct(c['trainable']):>12}")
    lines.append(f"{'model (base+adapter)':<24}{c['total']:>16,}")
    return "\n".join(lines)
