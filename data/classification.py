"""Sentence(-pair) classification and regression as a task object for train.py (see data/tasks.py).

    task = ClassificationTask(train_examples, val_examples, tok, num_labels=2, metric="accuracy")
    task.train, task.val          tokenised examples (dicts), each at most max_len tokens
    task.num_labels               the size of the model's head (train.py asks the loader for it)
    task.length(example)          its token count (train.py groups similar lengths into micro-batches)
    task.collate(examples)        -> input_ids (B, T), attention_mask (B, T) bool, token_type_ids (B, T), labels (B,)
    task.evaluate(model, examples) -> {"accuracy": ..., "<metric>": ...}

Texts are wrapped in the tokenizer's own sentence-pair template (tok.encode_pair: [CLS] a [SEP] b [SEP], or
<s> a </s></s> b </s>). The model is anything called as model(input_ids, attention_mask, token_type_ids) ->
logits (B, num_labels) with a `loss(batch)` (models.encoder.Encoder). Batches are padded on the RIGHT:
BERT's positions are 0..T-1 whatever the mask, so left padding would shift them.
"""
import torch

from .demo_data import demo_splits
from .glue import Example, glue_file, glue_task, read_glue
from .metrics import METRICS, accuracy


class ClassificationTask:
    def __init__(self, train: list[Example], val: list[Example], tok, num_labels: int, metric: str,
                 max_len: int = 128, eval_batch_size: int = 64):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choices: {sorted(METRICS)}")
        self.pad_id, self.num_labels, self.metric = tok.pad_id, num_labels, metric
        self.eval_batch_size = eval_batch_size
        self.train = [self._tokenise(e, tok, max_len) for e in train]
        self.val = [self._tokenise(e, tok, max_len) for e in val]

    @staticmethod
    def _tokenise(e: Example, tok, max_len: int) -> dict:
        ids, types = tok.encode_pair(e.text_a, e.text_b, max_len)
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


def build_glue_task(tok, name: str, root, max_len: int = 128) -> ClassificationTask:
    """GLUE `name` as the paper runs it: train on <root>/<Task>/train.tsv, validate on its dev file."""
    spec = glue_task(name)
    return ClassificationTask(read_glue(name, glue_file(root, name, "train")), read_glue(name, glue_file(root, name)),
                              tok, spec.num_labels, spec.metric, max_len)


def build_demo_task(tok, n_train: int, n_val: int, seed: int, max_len: int = 128) -> ClassificationTask:
    """The demo's generated sentiment task (data/demo_data.py)."""
    train, val = demo_splits(n_train, n_val, seed)
    return ClassificationTask(train, val, tok, 2, "accuracy", max_len)
