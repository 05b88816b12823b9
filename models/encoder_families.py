"""Encoder checkpoint families (BERT, RoBERTa): config.json -> EncoderConfig, one key table each, strict loading.

A family is a table entry: the config converter, the prefix its task models put before the body
(`bert.`, `roberta.`), the key table from our parameter names to the checkpoint's, and the checkpoint
tensors it knows and deliberately leaves unused (pretraining heads, RoBERTa's pooler). The family comes
from config.json's `model_type`, never from the directory name.

Loading is strict: a checkpoint tensor that is neither mapped nor known-unused, a missing tensor or a
mis-shaped one is an error naming the file and key. The classification head alone may be absent (a
pretrained body fine-tuned with a fresh head, as AutoModelForSequenceClassification does); it is then
initialised as HF initialises it (normal(0, initializer_range), zero bias) from the global RNG.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .encoder import Encoder, EncoderConfig
from .checkpoint import checkpoint_sources

# Our name -> checkpoint name (after the family prefix is removed); "{}" is the layer index.
BODY_KEYS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias": "embeddings.LayerNorm.bias",
    **{f"encoder.layer.{{}}.{m}.{p}": f"encoder.layer.{{}}.{m}.{p}"
       for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                 "output.dense", "output.LayerNorm")
       for p in ("weight", "bias")},
}
BERT_KEYS = {
    **BODY_KEYS,
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
ROBERTA_KEYS = {
    **BODY_KEYS,
    "classifier.hidden_proj.weight": "classifier.dense.weight",  # renamed: see models/encoder.py
    "classifier.hidden_proj.bias": "classifier.dense.bias",
    "classifier.out_proj.weight": "classifier.out_proj.weight",
    "classifier.out_proj.bias": "classifier.out_proj.bias",
}
HEAD_PREFIX = "classifier."


def _common(c: dict, path) -> dict:
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported "
                         "(only 'absolute')")
    try:
        return dict(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                    n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
                    max_positions=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                    norm_eps=c.get("layer_norm_eps", 1e-12), pad_id=c.get("pad_token_id", 0),
                    act=c.get("hidden_act", "gelu"), hidden_dropout=c.get("hidden_dropout_prob", 0.1),
                    attention_dropout=c.get("attention_probs_dropout_prob", 0.1))
    except KeyError as e:
        raise ValueError(f"{path}: missing field {e.args[0]!r}") from None


def bert_config(c: dict, path) -> dict:
    return dict(_common(c, path), position_offset=None, pooler=True, classifier="pooler_linear")


def roberta_config(c: dict, path) -> dict:
    fields = _common(c, path)
    return dict(fields, position_offset=fields["pad_id"], pooler=False, classifier="cls_mlp")


@dataclass(frozen=True)
class EncoderFamily:
    convert: Callable[[dict, Path], dict]
    prefix: str  # what the family's task models put before the body keys
    keys: dict[str, str]
    unused: tuple[str, ...]  # checkpoint key prefixes (after the family prefix) that are known and not used


FAMILIES = {
    "bert": EncoderFamily(bert_config, "bert.", BERT_KEYS, ("cls.", "embeddings.position_ids")),
    "roberta": EncoderFamily(roberta_config, "roberta.", ROBERTA_KEYS,
                             ("lm_head.", "pooler.", "embeddings.position_ids")),
}


def read_config_json(path) -> tuple[dict, EncoderFamily, Path]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json in the checkpoint folder {path}")
    c = json.loads(file.read_text())
    family = FAMILIES.get(c.get("model_type"))
    if family is None:
        raise ValueError(f"{file}: model_type {c.get('model_type')!r} is not an encoder family we support "
                         f"({sorted(FAMILIES)})")
    return c, family, file


def load_encoder_config(path, num_labels: int = 0) -> EncoderConfig:
    """EncoderConfig from `path`/config.json alone (build the Encoder on the meta device for dry runs)."""
    c, family, file = read_config_json(path)
    return EncoderConfig(**family.convert(c, file), num_labels=num_labels)


def _normalise(key: str, family: EncoderFamily) -> str:
    """Strip the task-model prefix and rename the old LayerNorm gamma/beta (early BERT checkpoints)."""
    key = key.removeprefix(family.prefix)
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def checkpoint_key(name: str, keys: dict[str, str]) -> str:
    """Our parameter name -> the checkpoint's, through the family table; raises naming the key."""
    layer = re.search(r"\.layer\.(\d+)\.", name)
    template = name if layer is None else name.replace(f".layer.{layer[1]}.", ".layer.{}.", 1)
    if template not in keys:
        raise KeyError(f"parameter {name!r} has no entry in the family key table")
    return keys[template].replace("{}", layer[1]) if layer else keys[template]


def load_encoder(path, num_labels: int | None = None, dtype=torch.float32, device="cpu") -> Encoder:
    """A publisher checkpoint folder -> Encoder in `dtype` on `device`.

    num_labels None: the checkpoint's own head if it has one, else a bare encoder. An int: that head size;
    the checkpoint's head is used when it has one of that size, a fresh head when it has none.
    """
    path = Path(path)
    c, family, config_file = read_config_json(path)
    sources = checkpoint_sources(path)  # {key: (file, shape, reader)} over single files, shards or .bin
    ckpt = {}
    for key, src in sources.items():
        name = _normalise(key, family)
        if name.startswith(family.unused):
            continue
        if name in ckpt:
            raise ValueError(f"{src.file}: key {key!r} appears twice (with and without {family.prefix!r})")
        ckpt[name] = key

    head_keys = [k for k in ckpt if k.startswith(HEAD_PREFIX)]
    out_key = "classifier.out_proj.weight" if family is FAMILIES["roberta"] else "classifier.weight"
    ckpt_labels = sources[ckpt[out_key]].shape[0] if out_key in ckpt else 0
    weights_file = sources[next(iter(ckpt.values()))].file if ckpt else path
    if num_labels is None:
        num_labels = ckpt_labels
    elif ckpt_labels and ckpt_labels != num_labels:
        raise ValueError(f"{weights_file}: the checkpoint's head has {ckpt_labels} labels ({ckpt[out_key]!r}), "
                         f"{num_labels} were asked for")
    fresh_head = num_labels > 0 and not ckpt_labels
    if not num_labels and head_keys:
        raise ValueError(f"{weights_file}: head tensors without {out_key!r}: {head_keys}")

    cfg = EncoderConfig(**family.convert(c, config_file), num_labels=num_labels)
    with torch.device("meta"):
        model = Encoder(cfg)
    state, used = {}, set()
    for name, param in model.state_dict().items():
        if fresh_head and name.startswith(HEAD_PREFIX):
            continue
        ours = checkpoint_key(name, family.keys)
        if ours not in ckpt:
            raise KeyError(f"{weights_file}: missing tensor {family.prefix}{ours!r} (or {ours!r}) for {name!r}")
        src = sources[ckpt[ours]]
        if tuple(src.shape) != tuple(param.shape):
            raise ValueError(f"{src.file}: tensor {ckpt[ours]!r} has shape {list(src.shape)}, "
                             f"{name!r} needs {list(param.shape)} (from {config_file})")
        state[name] = src.read().to(device=device, dtype=dtype)
        used.add(ours)
    unexpected = sorted(ckpt[k] for k in set(ckpt) - used)
    if unexpected:
        raise ValueError(f"{weights_file}: unexpected tensors {unexpected}")
    if fresh_head:
        with torch.device(device):
            head = type(model.classifier)(cfg) if cfg.classifier == "cls_mlp" else torch.nn.Linear(cfg.dim, num_labels)
        std = c.get("initializer_range", 0.02)
        with torch.no_grad():
            for pname, p in head.named_parameters():
                if pname.endswith("weight"):
                    p.normal_(0.0, std)
                else:
                    p.zero_()
                state[f"classifier.{pname}"] = p.detach().to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model
