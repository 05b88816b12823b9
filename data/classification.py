"""Sentence(-pair) classification and regression as a task object for train.py (see data/tasks.py).

    task = ClassificationTask(train_examples, val_examples, pair_encoder(tok, "bert"), pad_id=tok.pad_id,
                              num_labels=2, metric="accuracy")
    task.train, task.val          tokenised examples (dicts), each at most max_len tokens
    task.length(example)          its token count (train.py groups similar lengths into micro-batches)
    task.collate(examples)        -> input_ids (B, T), attention_mask (B, T) bool, token_type_ids (B, T), labels (B,)
    task.loss(model, batch)       -> (sum of per-example losses, number of examples), scalar tensors
    task.evaluate(model, examples) -> {"accuracy": ..., "<metric>": ...}

The model is anything called as model(input_ids, attention_mask, token_type_ids) -> logits (B, num_labels)
(models.encoder.Encoder). The loss is cross-entropy, or squared error for regression (num_labels = 1,
STS-B), as HF's sequence classifiers compute it. Batches are padded on the RIGHT: BERT's positions are
0..T-1 whatever the mask, so left padding would shift them.
"""
from typing import Callable

import torch
import torch.nn.functional as F

from .demo_data import demo_splits
from .glue import Example, glue_file, glue_task, read_glue
from .metrics import METRICS, accuracy
from .pair_encoding import roberta_pairs, wrap_pair

PairEncoder = Callable[[str, str | None, int], tuple[list[int], list[int]]]


def pair_encoder(tok, model_type: str) -> PairEncoder:
    """(a, b, max_len) -> (ids, token types) in the family's template ([CLS] a [SEP] b [SEP] or
    <s> a </s></s> b </s>); `model_type` is config.json's."""
    if model_type == "bert":
        return tok.encode_pair
    if model_type == "roberta":
        fmt = roberta_pairs(tok.bos_id, tok.eos_id)
        return lambda a, b, max_len: wrap_pair(tok.encode(a), None if b is None else tok.encode(b), fmt, max_len)
    raise ValueError(f"no sentence-pair template for model_type {model_type!r} (bert, roberta)")


class ClassificationTask:
    def __init__(self, train: list[Example], val: list[Example], encode: PairEncoder, pad_id: int,
                 num_labels: int, metric: str, max_len: int = 128, eval_batch_size: int = 64):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choices: {sorted(METRICS)}")
        self.pad_id, self.num_labels, self.metric = pad_id, num_labels, metric
        self.eval_batch_size = eval_batch_size
        self.train = [self._tokenise(e, encode, max_len) for e in train]
        self.val = [self._tokenise(e, encode, max_len) for e in val]

    @staticmethod
    def _tokenise(e: Example, encode: PairEncoder, max_len: int) -> dict:
        ids, types = encode(e.text_a, e.text_b, max_len)
        return {"input_ids": ids, "token_type_ids": types, "label": e.label}

    def length(self, example: dict) -> int:
        """Token count, so train.py can put examples of similar length in one micro-batch."""
        return len(example["input_ids"])

    def collate(self, examples: list[dict]) -> dict:
        B, T = len(examples), max(len(e["input_ids"]) for e in examples)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        types = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n], types[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["token_type_ids"]), True
        dtype = torch.float32 if self.num_labels == 1 else torch.long
        labels = torch.tensor([e["label"] for e in examples], dtype=dtype)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()  # (B, L)
        labels = batch["labels"]
        if self.num_labels == 1:
            total = F.mse_loss(logits.squeeze(-1), labels, reduction="sum")
        else:
            total = F.cross_entropy(logits, labels, reduction="sum")
        return total, torch.tensor(labels.shape[0], device=labels.device)

    @torch.no_grad()
    def predict(self, model, examples: list[dict]) -> torch.Tensor:
        """Class ids (or regression scores) for `examples`, in their order; batches of similar length."""
        device = next(model.parameters()).device
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        preds = torch.empty(len(examples), dtype=torch.float32 if self.num_labels == 1 else torch.long)
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(order), self.eval_batch_size):
                idx = order[s:s + self.eval_batch_size]
                batch = {k: v.to(device) for k, v in self.collate([examples[i] for i in idx]).items()}
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()
                out = logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)
                preds[torch.tensor(idx)] = out.cpu()
        finally:
            model.train(was_training)
        return preds

    def evaluate(self, model, examples: list[dict]) -> dict:
        preds = self.predict(model, examples).tolist()
        labels = [e["label"] for e in examples]
        scores = {self.metric: METRICS[self.metric](preds, labels)}
        if self.num_labels > 1:
            scores["accuracy"] = accuracy(preds, labels)
        return scores


def build_glue_task(tok, model_type: str, name: str, root, max_len: int = 128) -> ClassificationTask:
    """GLUE `name` as the paper runs it: train on <root>/<Task>/train.tsv, validate on its dev file."""
    spec = glue_task(name)
    return ClassificationTask(read_glue(name, glue_file(root, name, "train")), read_glue(name, glue_file(root, name)),
                              pair_encoder(tok, model_type), tok.pad_id, spec.num_labels, spec.metric, max_len)


def build_demo_task(tok, model_type: str, n_train: int, n_val: int, seed: int, max_len: int = 128) -> ClassificationTask:
    """The demo's generated sentiment task (data/demo_data.py)."""
    train, val = demo_splits(n_train, n_val, seed)
    return ClassificationTask(train, val, pair_encoder(tok, model_type), tok.pad_id, 2, "accuracy", max_len)
