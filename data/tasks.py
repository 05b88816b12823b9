"""The seam between train.py and a data set: `TASKS` maps `data.task` names to builders.

A builder takes (experiment config, tokenizer, checkpoint directory) and returns a task object with (the
tokenizer is None for the tasks in TOKENIZER_FREE; `build_task` reads it from the checkpoint for the rest)
    train, val                    example lists (anything with len() and [i])
    collate(examples)             -> dict of CPU tensors for one micro-batch; the model computes its loss from
                                     it, model.loss(batch) -> (sum of per-target losses, number of targets),
                                     and train.py divides by the optimizer batch's total number of targets
    num_labels                    optional: the size of the task head the model needs (classification)
    evaluate(model, examples)     optional -> dict of metrics, called before and after training
    metric                        with evaluate: the key train.select_by=val_metric maximises (None: none)
    length(example)               optional -> its token count; train.py then groups examples of similar
                                  length into the same micro-batch (less padding, same gradient)
    set_epoch(epoch)              optional: called by train.py before each epoch's batches (augmentation)
    test                          optional: a held-out split eval.py scores as well (test_<metric>)
"""
from pathlib import Path

import torch

from data import alpaca_cleaned, code_feedback, mt_bench
from data.classification import ClassificationTask, build_demo_task, build_glue_task
from data.collate import build_example, collate_left_padded, special_ids
from data.commonsense import train_val_examples
from data.glue import GLUE_TASKS
from data.gsm8k import read_rows as read_gsm8k_rows
from data.image_task import ImageClassificationTask
from data.image_transforms import Preprocessing
from data.images import image_splits
from data.metamath import cached_splits, load_splits
from data.tokenizer import load_tokenizer


class CausalLMTask:
    """Prompt -> response training with the loss on the response and EOS (methods.md section 8)."""

    def __init__(self, train, val, pad_id: int):
        self.train, self.val, self.pad_id = train, val, pad_id

    def collate(self, examples) -> dict:
        return collate_left_padded(examples, self.pad_id)

    def length(self, example) -> int:
        return len(example[0])


class DevLossTask(CausalLMTask):
    """A causal-LM task validated on a dev set scored as the official Alpaca run picks its learning rate: the
    mean over examples of each example's mean token loss (`evaluate` -> example_loss, lowest best; train.py
    writes it before and after training, `train.py --sweep` ranks the runs by it). A loss is no metric to
    select a checkpoint by the highest of, so `metric` is None."""
    metric = None

    @torch.no_grad()
    def evaluate(self, model, examples) -> dict:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            losses = []
            for example in examples:  # one example per forward: model.loss sums over its batch
                loss_sum, n = model.loss({k: v.to(device) for k, v in self.collate([example]).items()})
                losses.append(loss_sum.float() / n.clamp(min=1))
        finally:
            model.train(was_training)
        return {"example_loss": torch.stack(losses).mean().item()}


def build_metamath(exp, tok, tokenizer_dir) -> CausalLMTask:
    d = exp.data
    train, val = load_splits(d.path, tok, tokenizer_dir, n_train=d.n_train, n_val=d.n_val,
                             max_tokens=d.max_tokens, shuffle_seed=d.shuffle_seed, cache_dir=d.cache_dir,
                             boundary=d.label_boundary)
    return CausalLMTask(train, val, pad_id=special_ids(tok)[2])


def build_commonsense(exp, tok, tokenizer_dir) -> CausalLMTask:
    """Commonsense-15K (or any file of its records): n_val held out by HF's train_test_split(seed=shuffle_seed),
    at most n_train of the rest."""
    d = exp.data
    train, val = train_val_examples(d.path, tok, n_val=d.n_val, seed=d.shuffle_seed, max_tokens=d.max_tokens,
                                    boundary=d.label_boundary, n_train=d.n_train)
    return CausalLMTask(train, val, pad_id=special_ids(tok)[2])


def build_code_feedback(exp, tok, tokenizer_dir) -> CausalLMTask:
    """CodeFeedback-Filtered-Instruction in file order: rows [0, n_train) train, the next n_val validate (the
    official split at 100,000 / 10,000), answers cut after their first fenced block (data/code_feedback.py)."""
    d = exp.data
    train_rows, val_rows = range(d.n_train), range(d.n_train, d.n_train + d.n_val)

    def examples():
        train, val = code_feedback.read_splits(d.path, train_rows, val_rows)
        return [build_example(tok, p, o, d.max_tokens, d.label_boundary) for p, o in train + val]
    train, val = cached_splits("code_feedback", d.path, tokenizer_dir, d.cache_dir, d.n_train, examples,
                               n_val=d.n_val, max_tokens=d.max_tokens, boundary=d.label_boundary)
    return CausalLMTask(train, val, pad_id=special_ids(tok)[2])


def build_alpaca(exp, tok, tokenizer_dir) -> CausalLMTask:
    """The first n_train records of alpaca-cleaned (all 51,760 in the paper), its templates, the first
    max_tokens tokens kept (data/alpaca_cleaned.py). The official run has no validation and keeps the last
    checkpoint; validation here is the MT-Bench dev set of data.dev_path (the GPT-4 answers the learning rate
    is picked by, DevLossTask), so a config validating once, at the end, keeps the last checkpoint too.
    The official right padding (pad = EOS, attention mask ids != EOS) gives the loss of this left-padded
    collation: the masked final EOS is no key of any scored query (data/alpaca_cleaned.py)."""
    d = exp.data
    if not d.dev_path:
        raise ValueError("data.task=alpaca needs data.dev_path: the MT-Bench folder (question.jsonl, "
                         "reference_answer/gpt-4.jsonl) whose GPT-4 answers validate the run")

    def examples():
        records = alpaca_cleaned.read_records(d.path)
        if len(records) < d.n_train:
            raise ValueError(f"{d.path}: {len(records)} records, fewer than data.n_train = {d.n_train}")
        return [alpaca_cleaned.example_ids(tok, r, d.max_tokens) for r in records[:d.n_train]]
    train, _ = cached_splits("alpaca", d.path, tokenizer_dir, d.cache_dir, d.n_train, examples,
                             max_tokens=d.max_tokens)
    folder = Path(d.dev_path)
    dev = [mt_bench.dev_example_ids(tok, p, o)
           for p, o in mt_bench.read_dev_set(folder / "question.jsonl", folder / "reference_answer" / "gpt-4.jsonl")]
    return DevLossTask(train, dev, pad_id=special_ids(tok)[2])


class GSM8KTask(CausalLMTask):
    """CausalLMTask with a metric: the mean answer loss (per response token) of a split, train.py's before/after
    and eval.py --run's val/test numbers. `test`: GSM8K's test problems in the same format."""
    num_labels = None  # no task head

    def __init__(self, train, val, test, pad_id: int, batch_size: int):
        super().__init__(train, val, pad_id)
        self.test, self.batch_size = test, batch_size

    @torch.no_grad()
    def evaluate(self, model, examples) -> dict:
        device = next(model.parameters()).device
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))  # similar lengths: less padding
        total, count = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, len(order), self.batch_size):
            batch = self.collate([examples[i] for i in order[start:start + self.batch_size]])
            loss_sum, n = model.loss({k: v.to(device) for k, v in batch.items()})
            total += loss_sum.float()
            count += n
        return {"answer_loss": (total / count.clamp(min=1)).item()}


def build_gsm8k(exp, tok, tokenizer_dir) -> GSM8KTask:
    """GSM8K's train.jsonl (data.path) in the MetaMathQA prompt format (methods.md 8): data.n_val problems held
    out by data.shuffle_seed for validation, n_train of the rest; eval.path's problems (all of them) as `test`."""
    d = exp.data
    kw = dict(max_tokens=d.max_tokens, cache_dir=d.cache_dir, boundary=d.label_boundary, read_rows=read_gsm8k_rows,
              source="gsm8k")
    train, val = load_splits(d.path, tok, tokenizer_dir, n_train=d.n_train, n_val=d.n_val,
                             shuffle_seed=d.shuffle_seed, **kw)
    n_test = len(read_gsm8k_rows(exp.eval.path))
    test, _ = load_splits(exp.eval.path, tok, tokenizer_dir, n_train=n_test, n_val=0, shuffle_seed=0, **kw)
    return GSM8KTask(train, val, test, pad_id=special_ids(tok)[2], batch_size=exp.train.micro_batch_size)


def build_demo_sentiment(exp, tok, tokenizer_dir) -> ClassificationTask:
    d = exp.data
    return build_demo_task(tok, d.n_train, d.n_val, d.shuffle_seed, d.max_tokens)


def _glue_builder(name):
    """GLUE task `name`: all of data.path/<Task>/train.tsv, validated on its dev file (no n_train/n_val)."""
    def build(exp, tok, tokenizer_dir) -> ClassificationTask:
        return build_glue_task(tok, name, exp.data.path, exp.data.max_tokens)
    return build


def build_images(exp, tok, checkpoint_dir) -> ImageClassificationTask:
    """Image classification on data.dataset read from data.path, with the checkpoint's image processor
    settings (its preprocessor_config.json); the paper's splits (seed 0), augmentation seeded by train.seed."""
    d = exp.data
    if not d.dataset:
        raise ValueError("data.task=images needs data.dataset (cifar100, food101, flowers102, resisc45 or digits)")
    prep = Preprocessing.from_config(Path(checkpoint_dir) / "preprocessor_config.json")
    return ImageClassificationTask(image_splits(d.dataset, d.path), prep, seed=exp.train.seed, workers=d.num_workers)


TASKS = {"metamath": build_metamath, "gsm8k": build_gsm8k, "demo_sentiment": build_demo_sentiment,
         **{f"glue_{name}": _glue_builder(name) for name in GLUE_TASKS}, "images": build_images,
         "commonsense": build_commonsense, "code_feedback": build_code_feedback, "alpaca": build_alpaca}
TOKENIZER_FREE = {"images"}


def build_task(exp, checkpoint_dir):
    """The task object of exp.data.task, with the checkpoint's tokenizer for the tasks that need one."""
    tok = None if exp.data.task in TOKENIZER_FREE else load_tokenizer(checkpoint_dir)
    return TASKS[exp.data.task](exp, tok, checkpoint_dir)
