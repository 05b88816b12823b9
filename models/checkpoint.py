"""Load any model (decoder LLM, encoder, ViT) from a checkpoint directory exactly as its publisher ships it.

    config.json                               -> family (model_type, else architectures) -> model config
    model.safetensors | model-0000x-of-0000y.safetensors + model.safetensors.index.json
    | pytorch_model.bin | pytorch_model-0000x-of-0000y.bin + pytorch_model.bin.index.json
                                              -> tensors, memory-mapped, read one at a time

This is the one loader of every network kind; a family (models/families.py, models/encoder_families.py,
models/vit_families.py) is data: its config converter, model class and ONE key table from checkpoint key
templates to our parameter names. The model is built on the meta device and filled parameter by parameter through that table, so the
only full copy ever held is the model itself. Loading is strict: a missing, unexpected or mis-shaped tensor
is an error naming the file and key, checked from the headers before any data is read. The one tensor
group that may be missing is a family's task head (a pretrained body fine-tuned with a fresh head, as
HF's Auto*For*Classification does): it is then initialised as HF initialises it.
"""
import dataclasses
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from data.gguf_file import GGUFFile, is_gguf
from data.packaged_checkpoint import resolve_checkpoint_path
from data.safetensors_io import SafetensorsFile
from .encoder_families import ENCODER_FAMILIES
from .families import DECODER_FAMILIES, Family
from .gguf import gguf_config_json, gguf_tensors
from .vit_families import VIT_FAMILIES

FAMILIES = {**DECODER_FAMILIES, **ENCODER_FAMILIES, **VIT_FAMILIES}

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


def family_of(raw: dict, file) -> Family:
    """The Family that config.json `raw` (read from `file`) names, by model_type, else by architectures."""
    model_type = raw.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type is None:
        for arch in raw.get("architectures") or []:
            for fam in FAMILIES.values():
                if arch in fam.architectures:
                    return fam
    raise ValueError(f"{file}: unsupported model family (model_type={model_type!r}, "
                     f"architectures={raw.get('architectures')!r}); supported model_type values: "
                     f"{', '.join(sorted(FAMILIES))}")


def load_config(path):
    """The model config (DecoderConfig, EncoderConfig) from `path`/config.json (or a .gguf file's metadata) alone."""
    raw, file = _config_fields(resolve_checkpoint_path(path))
    return family_of(raw, file).to_config(raw, file)


def _config_fields(path: Path) -> tuple[dict, Path]:
    """(config.json dict, the file it came from): a directory's config.json, or a .gguf file's metadata."""
    return (gguf_config_json(GGUFFile(path)), path) if is_gguf(path) else read_config_json(path)


# --- key mapping ------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


def map_key(key: str, family: Family, file="checkpoint") -> str | None:
    """Our parameter name for checkpoint `key` through the family's table ({template: name or None}), after
    the family's optional key prefix is stripped. None for a tensor known and deliberately unused (a table
    entry of None, or a key under one of the family's ignored prefixes). Raises naming the key otherwise."""
    bare = key.removeprefix(family.key_prefix) if family.key_prefix else key
    for template, target in family.keys.items():
        m = _template_regex(template).match(bare)
        if m:
            return None if target is None else target.replace("{}", m.group(1)) if m.groups() else target
    if bare.startswith(family.ignored_prefixes):
        return None
    raise ValueError(f"{file}: unexpected tensor '{key}' (no entry in the {family.name} key table)")


def inverse_key(name: str, table: dict) -> str:
    """The checkpoint key (without any prefix) holding our parameter `name`."""
    for template, target in table.items():
        m = None if target is None else _template_regex(target).match(name)
        if m:
            return template.replace("{}", m.group(1)) if m.groups() else template
    raise ValueError(f"parameter '{name}' has no entry in the key table")


def export_state(model: nn.Module, table: dict) -> dict:
    """The model's parameters under checkpoint keys: the inverse of loading. A parameter shared under
    several names (tied lm_head) is written once, under its first name."""
    return {inverse_key(name, table): p.detach() for name, p in model.named_parameters()}


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
    """{checkpoint key: _Source} over every weight file of the directory (shards through the index), or of
    one .gguf file (dequantised on read)."""
    path = Path(path)
    if is_gguf(path):
        return {k: _Source(path, shape, read) for k, (shape, read) in gguf_tensors(GGUFFile(path)).items()}
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


def fill_model(model: nn.Module, sources: dict, family: Family, dtype, device, where="checkpoint",
               fresh: str | None = None):
    """Assign every parameter of the meta-device `model` from `sources` through the family's table, strictly.

    Every check runs on shapes first; then each parameter is copied once from its memory-mapped tensor.
    A parameter shared under several names (tied lm_head) is filled from its first name; a checkpoint
    that also stores the alias must hold the same values. Parameters under the module `fresh` (a new task
    head) are left on the meta device for the caller to initialise.
    """
    params = dict(model.named_parameters())  # first names only
    first_name = {id(p): n for n, p in params.items()}
    aliases = {n: first_name[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
               if n != first_name[id(p)]}  # alias -> first name, for shared parameters
    plan = {}  # our name -> (source, checkpoint key)
    for key, src in sources.items():
        name = map_key(key, family, src.file)
        if name is None:  # known and deliberately unused
            continue
        target = params.get(name, params.get(aliases.get(name)))
        if target is None:
            raise ValueError(f"{src.file}: unexpected tensor '{key}' (the model has no parameter '{name}' "
                             f"for this config.json)")
        if tuple(src.shape) != tuple(target.shape):
            raise ValueError(f"{src.file}: tensor '{key}' has shape {tuple(src.shape)}, the model expects "
                             f"{tuple(target.shape)}")
        if name in plan:
            raise ValueError(f"{src.file}: tensor '{key}' fills '{name}' a second time (duplicate key)")
        plan[name] = (src, key)
    skip = () if fresh is None else (fresh + ".",)
    missing = [n for n in params if n not in plan and not n.startswith(skip)]
    if missing:
        raise ValueError(f"{where}: missing tensor '{family.key_prefix}{inverse_key(missing[0], family.keys)}' "
                         f"(for parameter '{missing[0]}'; {len(missing)} parameters missing in all)")
    for name, p in params.items():
        if name in plan:
            value = plan[name][0].read().to(device=device, dtype=dtype, copy=True)
            _set_parameter(model, name, nn.Parameter(value, requires_grad=p.requires_grad))
    for alias, first in aliases.items():
        shared = model.get_parameter(first)
        if alias in plan:
            src, key = plan[alias]
            if not torch.equal(src.read().to(device=device, dtype=dtype), shared.data):
                raise ValueError(f"{src.file}: tensor '{key}' differs from the weight it is tied to ('{first}')")
        _set_parameter(model, alias, shared)


def _head_labels(sources: dict, family: Family, where) -> int:
    """How many labels the checkpoint's own task head has (0: none); a partial head is an error."""
    keys = {k.removeprefix(family.key_prefix): k for k in sources}
    head = [k for k in keys if k.startswith(family.head + ".")]
    if not head:
        return 0
    if family.head_size_key not in keys:
        raise ValueError(f"{where}: head tensors {sorted(keys[k] for k in head)} without "
                         f"'{family.key_prefix}{family.head_size_key}'")
    return sources[keys[family.head_size_key]].shape[0]


def load_model(path, dtype=torch.float32, device="cpu", num_labels: int | None = None) -> nn.Module:
    """The model of checkpoint directory `path` (or a .gguf file, or `package:<module>`), in `dtype` on
    `device`, in eval mode.

    The kind (decoder, encoder) comes from config.json. `num_labels`: the size of the task head of a family
    that has one (encoders): the checkpoint's own head when it has one of that size, else a fresh head; None
    takes the checkpoint's head (or none). device "meta" builds the model from config.json alone (dry runs).
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported load dtype {dtype} (float32, bfloat16 or float16)")
    path = resolve_checkpoint_path(path)
    device = torch.device(device)
    raw, file = _config_fields(path)
    family: Family = family_of(raw, file)
    cfg = family.to_config(raw, file)
    meta = device.type == "meta"
    sources = {} if meta else checkpoint_sources(path)
    if num_labels is not None and family.head is None:
        raise ValueError(f"{file}: a {family.name} model has no classification head (num_labels={num_labels})")
    fresh = None
    if family.head is not None:
        in_file = 0 if meta else _head_labels(sources, family, path)
        if num_labels is not None and in_file and in_file != num_labels:
            raise ValueError(f"{path}: the checkpoint's head has {in_file} labels, {num_labels} were asked for")
        labels = in_file if num_labels is None else num_labels
        cfg = dataclasses.replace(cfg, num_labels=labels)
        fresh = family.head if labels and not in_file else None
    with torch.device("meta"):
        model = family.build(cfg)
    if meta:
        return model.eval()
    fill_model(model, sources, family, dtype, device, where=path, fresh=fresh)
    if fresh is not None:
        family.init_head(model, raw, dtype, device)
    model.materialize_buffers(device)
    return model.eval()
