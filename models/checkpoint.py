"""Load a model from a checkpoint directory exactly as its publisher ships it.

    config.json                               -> family (models/families.py) -> model config
    model.safetensors | model-0000x-of-0000y.safetensors + model.safetensors.index.json
    | pytorch_model.bin | pytorch_model-0000x-of-0000y.bin + pytorch_model.bin.index.json
                                              -> tensors, memory-mapped, read one at a time

The model is built on the meta device and filled parameter by parameter through the family's key table,
so the only full copy ever held is the model itself. Loading is strict: a missing, unexpected or
mis-shaped tensor is an error naming the file and key, checked from the headers before any data is read.
"""
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .families import Family, family_of
from data.safetensors_io import SafetensorsFile

WEIGHT_FILES = (  # (index file, single file) in order of preference
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def read_config_json(path) -> tuple[dict, Path]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: config.json not found (is {path} a checkpoint directory?)")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return raw, file


def load_config(path):
    """The model config (a DecoderConfig for decoder families) from `path`/config.json alone."""
    raw, file = read_config_json(path)
    return family_of(raw, file).to_config(raw, file)


# --- key mapping ------------------------------------------------------------------------------------

def _names(target) -> tuple:
    return () if target is None else target if isinstance(target, tuple) else (target,)


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


def map_key(key: str, table: dict, file="checkpoint") -> tuple:
    """Our parameter name(s) for checkpoint `key` through `table` ({template: name, tuple of names or None}).

    One name for a plain tensor; several for a fused tensor split along dim 0; none for a tensor the
    table knows and deliberately leaves unused (None). Raises naming the key when the table lacks it.
    """
    for template, target in table.items():
        m = _template_regex(template).match(key)
        if m:
            names = _names(target)
            return tuple(n.replace("{}", m.group(1)) if m.groups() else n for n in names)
    raise ValueError(f"{file}: unexpected tensor '{key}' (no entry in the key table)")


def inverse_key(name: str, table: dict) -> tuple[str, int]:
    """(checkpoint key, part index) holding our parameter `name`; part > 0 only inside fused tensors."""
    for template, target in table.items():
        names = _names(target)
        for part, n in enumerate(names):
            m = _template_regex(n).match(name)
            if m:
                return (template.replace("{}", m.group(1)) if m.groups() else template), part
    raise ValueError(f"parameter '{name}' has no entry in the key table")


def export_state(model: nn.Module, table: dict) -> dict:
    """The model's parameters under checkpoint keys, fused tensors concatenated: the inverse of loading.
    A parameter shared under several names (tied lm_head) is written once, under its first name."""
    parts = {}
    for name, p in model.named_parameters():
        key, part = inverse_key(name, table)
        parts.setdefault(key, {})[part] = p.detach()
    return {k: (v[0] if len(v) == 1 else torch.cat([v[i] for i in range(len(v))])) for k, v in parts.items()}


# --- reading tensors --------------------------------------------------------------------------------

@dataclass
class _Source:
    """One checkpoint tensor: its file, shape and a reader of its (memory-mapped) data."""
    file: Path
    shape: tuple
    read: callable


def _safetensors_sources(file: Path) -> dict:
    f = SafetensorsFile(file)
    return {k: _Source(file, f.shape(k), lambda k=k: f.get(k)) for k in f.keys()}


def _bin_sources(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: weight file not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for truncated or corrupt archives
        raise ValueError(f"{file}: cannot read PyTorch weights, truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    bad = [k for k, t in state.items() if not isinstance(t, torch.Tensor)]
    if bad:
        raise ValueError(f"{file}: entry '{bad[0]}' is not a tensor")
    return {k: _Source(file, tuple(t.shape), lambda t=t: t) for k, t in state.items()}


def checkpoint_sources(path) -> dict:
    """{checkpoint key: _Source} over every weight file of the directory (shards through the index)."""
    path = Path(path)
    for index_name, single_name in WEIGHT_FILES:
        opener = _safetensors_sources if single_name.endswith(".safetensors") else _bin_sources
        index = path / index_name
        if index.is_file():
            return _sharded_sources(index, opener)
        if (path / single_name).is_file():
            return opener(path / single_name)
    raise FileNotFoundError(f"{path}: no weights found (looked for {', '.join(n for pair in WEIGHT_FILES for n in pair)})")


def _sharded_sources(index: Path, opener) -> dict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a valid shard index ({type(e).__name__}: {e})") from None
    sources = {}
    for shard in sorted(set(weight_map.values())):
        listed = {k for k, s in weight_map.items() if s == shard}
        found = opener(index.parent / shard)
        for key in sorted(listed - found.keys()):
            raise ValueError(f"{index.parent / shard}: missing tensor '{key}' that {index.name} places in it")
        for key in sorted(found.keys() - listed):
            raise ValueError(f"{index.parent / shard}: tensor '{key}' is not listed for this shard in {index.name}")
        sources.update(found)
    return sources


# --- filling the model ------------------------------------------------------------------------------

def _set_parameter(model: nn.Module, name: str, param: nn.Parameter):
    module_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(module_name) if module_name else model, leaf, param)


def fill_model(model: nn.Module, sources: dict, table: dict, dtype, device, where="checkpoint"):
    """Assign every parameter of the meta-device `model` from `sources` through `table`, strictly.

    Every check runs on shapes first; then each parameter is copied once from its memory-mapped tensor.
    A parameter shared under several names (tied lm_head) is filled from its first name; a checkpoint
    that also stores the alias must hold the same values.
    """
    params = dict(model.named_parameters())  # first names only
    first_name = {id(p): n for n, p in params.items()}
    aliases = {n: first_name[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
               if n != first_name[id(p)]}  # alias -> first name, for shared parameters
    plan = {}  # our name -> (source, checkpoint key, dim-0 offset of this part)
    for key, src in sources.items():
        names = map_key(key, table, src.file)
        if not names:  # known and deliberately unused
            continue
        sizes = []
        for n in names:
            target = params.get(n, params.get(aliases.get(n)))
            if target is None:
                raise ValueError(f"{src.file}: unexpected tensor '{key}' (the model has no parameter '{n}' "
                                 f"for this config.json)")
            sizes.append(target.shape)
        want = sizes[0] if len(sizes) == 1 else (sum(s[0] for s in sizes), *sizes[0][1:])
        if tuple(src.shape) != tuple(want):
            raise ValueError(f"{src.file}: tensor '{key}' has shape {tuple(src.shape)}, the model expects {tuple(want)}")
        offset = 0
        for n, s in zip(names, sizes):
            if n in plan:
                raise ValueError(f"{src.file}: tensor '{key}' fills '{n}' a second time (duplicate key)")
            plan[n] = (src, key, offset)
            offset += s[0]
    missing = [n for n in params if n not in plan]
    if missing:
        key = inverse_key(missing[0], table)[0]
        raise ValueError(f"{where}: missing tensor "
                         f"'{key}' (for parameter '{missing[0]}'; {len(missing)} parameters missing in all)")
    for name, p in params.items():
        src, key, offset = plan[name]
        value = src.read().narrow(0, offset, p.shape[0]).to(device=device, dtype=dtype, copy=True)
        _set_parameter(model, name, nn.Parameter(value, requires_grad=p.requires_grad))
    for alias, first in aliases.items():
        shared = model.get_parameter(first)
        if alias in plan:
            src, key, _ = plan[alias]
            if not torch.equal(src.read().to(device=device, dtype=dtype), shared.data):
                raise ValueError(f"{src.file}: tensor '{key}' differs from the weight it is tied to ('{first}')")
        _set_parameter(model, alias, shared)


def load_model(path, dtype=torch.float32, device="cpu") -> nn.Module:
    """The model of checkpoint directory `path`, in `dtype` on `device`, in eval mode."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported load dtype {dtype} (float32, bfloat16 or float16)")
    raw, file = read_config_json(path)
    family: Family = family_of(raw, file)
    cfg = family.to_config(raw, file)
    with torch.device("meta"):
        model = family.build(cfg)
    fill_model(model, checkpoint_sources(path), family.keys, dtype, torch.device(device), where=path)
    model.materialize_buffers(torch.device(device))
    return model.eval()
