"""Adapter files: safetensors written by our own writer, the AdapterConfig in the metadata.

Keys are the parameter names of every trainable tensor (model.adapter_trainable: the method's tensors and
the modules trained fully, e.g. "classifier.weight"; every parameter for full fine-tuning), "<module
name>.<basis>" for per-layer frozen bases (GiVA's A and B, OSoRA's U_r, V_r, S_r) and "shared.<tensor>" for
VeRA's and RandLoRA's shared bases, stored once. A training run writes the bases once
(include_trainable=False) and small trainable-only files per checkpoint (include_bases=False); load_adapter
takes them all together. Nothing here depends on the method: each layer lists its own tensors.

An adapter is bound to the base it was trained on: the metadata records `base_fingerprint` (giva/inject.py), and
loading onto a base with another fingerprint (another checkpoint of the same shapes: another family, seed or
fine-tune) is refused unless `allow_other_base=True`.
"""
import json
from pathlib import Path

import torch
from torch import nn

from giva.config import AdapterConfig
from giva.inject import adapted_layers, adapter_parameters, base_fingerprint, build_adapters
from data.safetensors_io import SafetensorsFile, save_safetensors

FORMAT = "giva-adapter/1"


def _tensors(model: nn.Module, bases: bool, trainable: bool) -> dict[str, torch.Tensor]:
    out = dict(zip(model.adapter_trainable, adapter_parameters(model))) if trainable else {}
    if bases:
        for name, layer in adapted_layers(model).items():
            out.update({f"{name}.{k}": t for k, t in layer.bases().items()})
            if layer.shared is not None:
                out.update({f"shared.{k}": t for k, t in layer.shared.named_buffers()})
    return out


def save_adapter(model: nn.Module, path, *, include_bases: bool = True, include_trainable: bool = True,
                 gather=None):
    """`gather(tensors) -> tensors or None`: makes the tensors whole first (distributed.gather_full for a model
    sharded over processes: every process calls save_adapter, the one that gets None writes nothing)."""
    if not hasattr(model, "adapter_config"):
        raise ValueError("the model has no adapters to save")
    tensors = {k: t.detach() for k, t in _tensors(model, include_bases, include_trainable).items()}
    if gather is not None and (tensors := gather(tensors)) is None:
        return
    save_safetensors(path, tensors, {"format": FORMAT, "adapter_config": json.dumps(model.adapter_config.to_dict()),
                                     "base_fingerprint": model.adapter_base})


def _read_config(f: SafetensorsFile) -> AdapterConfig:
    meta = f.metadata or {}
    if meta.get("format") != FORMAT or "adapter_config" not in meta:
        raise ValueError(f"{f.path}: not a {FORMAT} file (metadata {sorted(meta)})")
    try:
        return AdapterConfig.from_dict(json.loads(meta["adapter_config"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{f.path}: adapter_config metadata is not JSON ({e})") from None


def _check_base(files: list, model_base: str, allow_other_base: bool):
    for f in files:
        recorded = (f.metadata or {}).get("base_fingerprint", "")
        if recorded and model_base and recorded != model_base and not allow_other_base:
            raise ValueError(f"{f.path}: this adapter was trained on another base model (weights fingerprint "
                             f"{recorded}, this model's {model_base}); load it onto its own base, or pass "
                             f"allow_other_base=True (eval.py --allow-other-base) to apply it anyway")


@torch.no_grad()
def load_adapter(model: nn.Module, paths, *, allow_other_base: bool = False):
    """Load adapter file(s) onto `model`.

    A model without adapters gets them built from the files' config, and every tensor (bases and
    trainable) must then be in the files; OSoRA then rebuilds W_res from the model's own W0, which
    must be the pristine base weight. A model that already has the same adapters (resuming) takes the
    trainable tensors in the files, and any bases in the files must equal its own. A failed load
    onto a fresh model leaves it with unusable adapters: rebuild the model before trying again. The files'
    base fingerprint must be the model's (see the module docstring).
    """
    files = [SafetensorsFile(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    cfgs = [_read_config(f) for f in files]
    source = {}
    for f, cfg in zip(files, cfgs):
        if cfg != cfgs[0]:
            raise ValueError(f"{f.path}: adapter config {cfg} differs from {files[0].path}: {cfgs[0]}")
        for k in f.keys():
            if k in source:
                raise ValueError(f"tensor '{k}' is in both {source[k].path} and {f.path}")
            source[k] = f
    cfg = cfgs[0]
    fresh = not hasattr(model, "adapter_config")
    base = base_fingerprint(model, cfg) if fresh else model.adapter_base  # before the adapters touch W0
    if fresh:
        build_adapters(model, cfg)
    elif model.adapter_config != cfg:
        raise ValueError(f"{files[0].path}: adapter config {cfg} differs from the model's {model.adapter_config}")
    if any(layer.merged for layer in adapted_layers(model).values()):
        raise ValueError("cannot load an adapter into merged layers: unmerge_adapters(model) first")

    trainable = _tensors(model, bases=False, trainable=True)
    bases = _tensors(model, bases=True, trainable=False)
    unexpected = sorted(set(source) - set(trainable) - set(bases))
    if unexpected:
        raise ValueError(f"{source[unexpected[0]].path}: tensor(s) {unexpected[:5]} match nothing in the model")
    need = {**bases, **trainable} if fresh else {}
    missing = sorted(set(need) - set(source))
    if missing:
        raise ValueError(f"adapter tensor(s) {missing[:5]} are in none of {[str(f.path) for f in files]}")
    for key, f in source.items():
        dest = trainable.get(key, bases.get(key))
        if f.shape(key) != tuple(dest.shape):
            raise ValueError(f"{f.path}: tensor '{key}' has shape {f.shape(key)} but the model's is "
                             f"{tuple(dest.shape)}")
    _check_base(files, base, allow_other_base)
    for key, f in source.items():
        dest = trainable.get(key, bases.get(key))
        value = f.get(key)
        if key in bases and not fresh:
            if not torch.equal(value.to(dest.device, dest.dtype), dest):
                raise ValueError(f"{f.path}: basis '{key}' differs from the model's own")
            continue
        dest.copy_(value)
    if fresh:
        for layer in adapted_layers(model).values():
            layer.finish_load()
