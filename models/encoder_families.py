"""Encoder checkpoint families (BERT, RoBERTa): config.json -> EncoderConfig and one key table each.

They are `Family` entries (models/families.py) loaded by the one strict loader of models/checkpoint.py, like
the decoders. Checkpoints of a task model put a prefix before the body (`bert.`, `roberta.`): it is
stripped when present. Pretraining heads and RoBERTa's pooler are known and unused. The classification head
(`classifier`) may be absent (a pretrained body fine-tuned with a fresh head, as
AutoModelForSequenceClassification does); it is then initialised as HF does: normal(0, initializer_range)
weights, zero biases, from the global RNG.
"""
import torch

from .encoder import Encoder, EncoderConfig
from .families import Family, check_heads

_BODY = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
         "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias",
         *(f"encoder.layer.{{}}.{m}.{p}" for m in ("attention.self.query", "attention.self.key",
                                                   "attention.self.value", "attention.output.dense",
                                                   "attention.output.LayerNorm", "intermediate.dense",
                                                   "output.dense", "output.LayerNorm")
           for p in ("weight", "bias"))]
# Checkpoint key -> our parameter name: our modules mirror the checkpoint's names. Early BERT checkpoints
# call the LayerNorm parameters gamma and beta.
BODY_KEYS = {**{k: k for k in _BODY},
             **{k.replace("LayerNorm.weight", "LayerNorm.gamma"): k for k in _BODY if k.endswith("LayerNorm.weight")},
             **{k.replace("LayerNorm.bias", "LayerNorm.beta"): k for k in _BODY if k.endswith("LayerNorm.bias")}}
BERT_KEYS = {**BODY_KEYS, **{k: k for k in ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight",
                                            "classifier.bias")}}
ROBERTA_KEYS = {**BODY_KEYS, **{k: k for k in ("classifier.dense.weight", "classifier.dense.bias",
                                               "classifier.out_proj.weight", "classifier.out_proj.bias")}}


def _common(c: dict, path) -> dict:
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported "
                         "(only 'absolute')")
    check_heads(c, path)
    try:
        return dict(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                    n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
                    max_positions=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                    norm_eps=c.get("layer_norm_eps", 1e-12), pad_id=c.get("pad_token_id", 0),
                    act=c.get("hidden_act", "gelu"), hidden_dropout=c.get("hidden_dropout_prob", 0.1),
                    attention_dropout=c.get("attention_probs_dropout_prob", 0.1))
    except KeyError as e:
        raise ValueError(f"{path}: missing field {e.args[0]!r}") from None


def bert_config(c: dict, path) -> EncoderConfig:
    return EncoderConfig(**_common(c, path), position_offset=None, pooler=True, classifier="pooler_linear")


def roberta_config(c: dict, path) -> EncoderConfig:
    fields = _common(c, path)
    return EncoderConfig(**fields, position_offset=fields["pad_id"], pooler=False, classifier="cls_mlp")


@torch.no_grad()
def init_head(model: Encoder, raw: dict, dtype, device):
    """A fresh classification head, as HF initialises it: normal(0, initializer_range), zero bias."""
    std = raw.get("initializer_range", 0.02)
    for name, p in list(model.classifier.named_parameters()):
        value = torch.empty(p.shape, device=device, dtype=torch.float32)
        value.normal_(0.0, std) if name.endswith("weight") else value.zero_()
        module_name, _, leaf = name.rpartition(".")
        owner = model.classifier.get_submodule(module_name) if module_name else model.classifier
        setattr(owner, leaf, torch.nn.Parameter(value.to(dtype)))


def _encoder_family(name, architecture, convert, keys, ignored, head_size_key):
    return Family(name=name, architectures=(architecture,), to_config=convert, from_config=None, build=Encoder,
                  keys=keys, key_prefix=f"{name}.", ignored_prefixes=ignored, head="classifier",
                  head_size_key=head_size_key, init_head=init_head)


ENCODER_FAMILIES = {f.name: f for f in (
    _encoder_family("bert", "BertForSequenceClassification", bert_config, BERT_KEYS,
                    ("cls.", "embeddings.position_ids"), "classifier.weight"),
    _encoder_family("roberta", "RobertaForSequenceClassification", roberta_config, ROBERTA_KEYS,
                    ("lm_head.", "pooler.", "embeddings.position_ids"), "classifier.out_proj.weight"),
)}
