"""Take a result out: a run's adapter merged into its base model, written in the publisher's layout.

    python export.py --run runs/tiny_math --out exported/tiny_math          # the best checkpoint's vectors
    python export.py --run DIR --out DIR --checkpoint last --dtype bfloat16 --shard-gib 5

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
from giva import adapted_layers
from models.checkpoint import WEIGHT_FILES, family_of, inverse_key, map_key, read_config_json
from data.packaged_checkpoint import resolve_checkpoint_path

WEIGHT_NAMES = {name for pair in WEIGHT_FILES for name in pair}


def checkpoint_state(model, family) -> dict:
    """{checkpoint key: tensor} of the merged `model`'s base parameters (the adapters' own vectors, already
    folded into the weights, left out) as the family's publisher names them: its key prefix on the body of a
    task model, the head's keys bare, as the publishers' *ForSequenceClassification checkpoints are."""
    adapters_own = {f"{n}.{k}" for n, layer in adapted_layers(model).items() for k in layer.trainable()}
    state = {inverse_key(n, family.keys): p.detach() for n, p in model.named_parameters() if n not in adapters_own}
    if not family.key_prefix:
        return state
    head = (family.head + ".") if family.head else None
    return {k if head and k.startswith(head) else family.key_prefix + k: v for k, v in state.items()}


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
def export_run(run: Path, out: Path, checkpoint: str = "best", dtype=torch.float32, shard_gib: float = 5.0) -> Path:
    """The run's base with its `checkpoint` adapter merged, in the publisher's layout at `out`."""
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
    model = load_for_eval(base, Path(run), checkpoint, torch.float32, "cpu", num_labels=num_labels)
    state = {k: v.to(dtype).contiguous() for k, v in checkpoint_state(model, family).items()}
    config = dict(raw, torch_dtype=str(dtype).removeprefix("torch."))
    labels = getattr(model.cfg, "num_labels", 0)
    if labels and len(raw.get("id2label") or {}) != labels:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
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
    args = parser.parse_args(argv)
    out = export_run(args.run, args.out, args.checkpoint, getattr(torch, args.dtype), args.shard_gib)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    cli(main)
