"""Take a result out: a run's adapter merged into its base model, written in the publisher's layout; or, for a
method peft has (LoRA, VeRA, RandLoRA), the adapter alone in peft's format.

    python export.py --run runs/tiny_math --out exported/tiny_math          # the best checkpoint's vectors
    python export.py --run DIR --out DIR --checkpoint last --dtype bfloat16 --shard-gib 5
    python export.py --run DIR --out DIR --peft     # adapter_config.json + adapter_model.safetensors

--peft writes what peft's `PeftModel.from_pretrained(base, DIR)` reads: the method's tensors under
"base_model.model.<the publisher's module path>.<peft's tensor name>" (a head trained fully under its own
checkpoint keys, as peft's modules_to_save), VeRA's and RandLoRA's shared bases as "base_model.vera_A" etc.
(their save_projection), and each method's fields of the config from its own class (giva/<method>.py: peft_config).

The folder holds the base's own files unchanged (config.json, generation_config.json, the tokenizer files,
preprocessor_config.json), and the merged weights under the base's checkpoint keys as safetensors: one
model.safetensors, or model-0000i-of-0000n.safetensors shards with model.safetensors.index.json. transformers'
`from_pretrained` and our `load_model` read it unchanged. A classification head trained from scratch is
written with the `id2label` its size needs. The output folder must not exist yet; it appears whole or not at all.
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from data.safetensors_io import SafetensorsFile, save_safetensors
from eval import load_for_eval
from experiment import cli, load_experiment
from giva import adapted_layers, adapter_parameters
from giva.methods import METHODS
from models.checkpoint import WEIGHT_FILES, family_of, inverse_key, map_key, read_config_json
from data.packaged_checkpoint import resolve_checkpoint_path

WEIGHT_NAMES = {name for pair in WEIGHT_FILES for name in pair}


def checkpoint_key(name: str, family) -> str:
    """The publisher's key of our parameter `name`: the family's key prefix on the body of a task model, the
    head's keys bare, as the publishers' *ForSequenceClassification checkpoints are."""
    key = inverse_key(name, family.keys)
    head = (family.head + ".") if family.head else None
    return key if not family.key_prefix or (head and key.startswith(head)) else family.key_prefix + key


def checkpoint_state(model, family) -> dict:
    """{checkpoint key: tensor} of the merged `model`'s base parameters (the adapters' own vectors, already
    folded into the weights, left out)."""
    adapters_own = {f"{n}.{k}" for n, layer in adapted_layers(model).items() for k in layer.trainable()}
    return {checkpoint_key(n, family): p.detach() for n, p in model.named_parameters() if n not in adapters_own}


def peft_adapter(model, family, base: Path) -> tuple[dict, dict]:
    """(adapter_config.json, adapter_model.safetensors tensors) of `model`'s unmerged adapters in peft's format."""
    cfg, layers = model.adapter_config, adapted_layers(model)
    method = METHODS[cfg.method]
    if method.peft_type is None:
        raise ValueError(f"peft has no adapter format for method {cfg.method!r}: export the merged model "
                         f"(leave out --peft)")
    tensors, modules = {}, []
    for name, layer in layers.items():
        module = checkpoint_key(f"{name}.weight", family).removesuffix(".weight")
        modules.append(module)
        tensors.update({f"base_model.model.{module}.{k}": t for k, t in layer.peft_tensors().items()})
    tensors.update({f"base_model.{k}": t for k, t in method.peft_shared(next(iter(layers.values())).shared).items()})
    own = {f"{n}.{k}" for n, layer in layers.items() for k in layer.trainable()}
    head = {n: p for n, p in zip(model.adapter_trainable, adapter_parameters(model)) if n not in own}
    tensors.update({f"base_model.model.{checkpoint_key(n, family)}": p for n, p in head.items()})
    config = {"peft_type": method.peft_type, **method.peft_config(cfg), "target_modules": modules,
              "modules_to_save": list(cfg.modules_to_save) if head else None, "bias": "none",
              "task_type": "CAUSAL_LM" if family.head is None else None, "base_model_name_or_path": str(base),
              "inference_mode": True}
    return config, {k: t.detach().float().contiguous() for k, t in tensors.items()}


def shards(state: dict, max_bytes: int) -> list[dict]:
    """`state` cut, in order, into groups of at most `max_bytes` (a bigger tensor is a group of its own)."""
    groups, size = [{}], 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += nbytes
    return groups


def write_checkpoint(folder: Path, base: Path, state: dict, config: dict, shard_bytes: int):
    """The base's non-weight files, `config` as config.json and `state` as safetensors shards, into `folder`."""
    for file in base.iterdir():
        if file.is_file() and file.name not in WEIGHT_NAMES and not file.name.startswith("."):
            shutil.copy2(file, folder / file.name)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    groups = shards(state, shard_bytes)
    if len(groups) == 1:
        save_safetensors(folder / "model.safetensors", groups[0], {"format": "pt"})
        return
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_safetensors(folder / name, group, {"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


@torch.no_grad()
def export_run(run: Path, out: Path, checkpoint: str = "best", dtype=torch.float32, shard_gib: float = 5.0,
               peft: bool = False) -> Path:
    """The run's base with its `checkpoint` adapter merged, in the publisher's layout at `out` (peft: the
    adapter alone, in peft's format)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: export into a new folder")
    exp = load_experiment(Path(run) / "config.yaml")
    base = resolve_checkpoint_path(exp.model.path)
    raw, file = read_config_json(base)
    family = family_of(raw, file)
    num_labels = None
    if family.head is not None:  # the run's head size: its adapter file holds the trained head
        adapter = SafetensorsFile(Path(run) / "adapter.safetensors")
        head = map_key(family.head_size_key, family)
        num_labels = adapter.shape(head)[0] if head in adapter.keys() else None
    model = load_for_eval(base, Path(run), checkpoint, torch.float32, "cpu", num_labels=num_labels, merge=not peft)
    if peft:
        peft_config, peft_tensors = peft_adapter(model, family, base)
    else:
        state = {k: v.to(dtype).contiguous() for k, v in checkpoint_state(model, family).items()}
        config = dict(raw, torch_dtype=str(dtype).removeprefix("torch."))
        labels = getattr(model.cfg, "num_labels", 0)
        if labels and len(raw.get("id2label") or {}) != labels:
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if peft:
            (tmp / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
            save_safetensors(tmp / "adapter_model.safetensors", peft_tensors, {"format": "pt"})
        else:
            write_checkpoint(tmp, base, state, config, int(shard_gib * 2**30))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory written by train.py")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint folder")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--shard-gib", type=float, default=5.0, help="largest safetensors shard (GiB)")
    parser.add_argument("--peft", action="store_true",
                        help="the adapter alone in peft's format (LoRA, VeRA, RandLoRA runs)")
    args = parser.parse_args(argv)
    out = export_run(args.run, args.out, args.checkpoint, getattr(torch, args.dtype), args.shard_gib, args.peft)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    cli(main)
