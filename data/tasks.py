"""The seam between train.py and a data set: `TASKS` maps `data.task` names to builders.

A builder takes (experiment config, tokenizer, checkpoint dir) and returns a task object with
    train, val                    example lists (anything with len() and [i])
    collate(examples)             -> dict of CPU tensors for one micro-batch
    loss(model, batch)            -> (sum of per-target losses, number of targets), scalar tensors;
                                     train.py divides by the optimizer batch's total number of targets
    evaluate(model, examples)     optional -> dict of metrics, called before and after training
    length(example)               optional -> its token count; train.py then groups examples of similar
                                  length into the same micro-batch (less padding, same gradient)
"""
import json
from pathlib import Path

import torch

from data.classification import ClassificationTask, build_demo_task, build_glue_task
from data.collate import IGNORE, collate_left_padded, special_ids
from data.glue import GLUE_TASKS
from data.metamath import load_splits
from models.lm_loss import linear_cross_entropy


def chunked_cross_entropy(hidden, lm_head, labels, chunk: int):
    """Sum of next-token losses over the labelled positions, and their count, without ever holding the
    whole (B, T, V) fp32 logits: models/lm_loss.py takes `chunk` sequence positions of every row at a time
    and computes the gradient w.r.t. the hidden states as it goes (no recomputation in the backward)."""
    B, T, _ = hidden.shape
    # hidden[t] predicts token t+1; the last position predicts nothing (IGNORE), which keeps hidden a view
    targets = torch.cat([labels[:, 1:], labels.new_full((B, 1), IGNORE)], dim=1)  # (B, T)
    total = linear_cross_entropy(hidden.flatten(0, 1), lm_head.weight, targets.flatten(), chunk=chunk * B)
    return total, (targets != IGNORE).sum()


class CausalLMTask:
    """Prompt -> response training with the loss on the response and EOS (methods.md section 8)."""

    def __init__(self, train, val, pad_id: int, loss_chunk: int):
        self.train, self.val, self.pad_id, self.loss_chunk = train, val, pad_id, loss_chunk

    def collate(self, examples) -> dict:
        return collate_left_padded(examples, self.pad_id)

    def length(self, example) -> int:
        return len(example[0])

    def loss(self, model, batch):
        hidden = model.forward_hidden(batch["input_ids"], positions=batch["positions"], pad_mask=batch["pad_mask"])
        return chunked_cross_entropy(hidden, model.lm_head, batch["labels"], self.loss_chunk)


def build_metamath(exp, tok, tokenizer_dir) -> CausalLMTask:
    d = exp.data
    train, val = load_splits(d.path, tok, tokenizer_dir, n_train=d.n_train, n_val=d.n_val,
                             max_tokens=d.max_tokens, shuffle_seed=d.shuffle_seed, cache_dir=d.cache_dir,
                             boundary=d.label_boundary)
    return CausalLMTask(train, val, pad_id=special_ids(tok)[2], loss_chunk=exp.train.loss_chunk)


def _model_type(checkpoint_dir) -> str:
    return json.loads((Path(checkpoint_dir) / "config.json").read_text())["model_type"]


def build_demo_sentiment(exp, tok, checkpoint_dir) -> ClassificationTask:
    d = exp.data
    return build_demo_task(tok, _model_type(checkpoint_dir), d.n_train, d.n_val, d.shuffle_seed, d.max_tokens)


def _glue_builder(name):
    """GLUE task `name`: all of data.path/<Task>/train.tsv, validated on its dev file (no n_train/n_val)."""
    def build(exp, tok, checkpoint_dir) -> ClassificationTask:
        return build_glue_task(tok, _model_type(checkpoint_dir), name, exp.data.path, exp.data.max_tokens)
    return build


TASKS = {"metamath": build_metamath, "demo_sentiment": build_demo_sentiment,
         **{f"glue_{name}": _glue_builder(name) for name in GLUE_TASKS}}
