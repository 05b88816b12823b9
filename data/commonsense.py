"""Commonsense reasoning (methods.md section 8, "Commonsense-15K -> 8 tasks"): LLM-Adapters' JSON records,
the Alpaca prompts, the 120-example validation hold-out, the eight test sets and their answer extraction.

A data file is a JSON array of {"instruction", "input", "output", "answer"} records: `commonsense_15k.json`
for training, `<dataset>/test.json` per task for testing (the per-task `train.json` files share the format).

    prompt  = data/alpaca.py's WITH_INPUT or NO_INPUT filled with the record (input non-empty or not)
    train   : prompt + output, the loss on the response and EOS only, 512 tokens (data/collate.py)
    test    : [BOS] + prompt; beam 4, 32 new tokens (the caller generates)
    predict : the FIRST match of the task's regex in the stripped generation, "" when none
    correct : prediction == record.answer (string equality)

The regexes are the official ones, unchanged: case-sensitive and without word boundaries, so "Answer1"
is no prediction and "answer12" reads as "answer1", exactly as the paper's numbers were scored.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import alpaca
from data.collate import build_example, special_ids

FIELDS = ("instruction", "input", "output", "answer")


@dataclass(frozen=True)
class Task:
    directory: str  # the task's folder in LLM-Adapters' dataset/ layout
    pattern: re.Pattern


_ANSWER = re.compile(r"answer1|answer2|answer3|answer4|answer5")
# The paper's Table 2 order.
TASKS = {
    "boolq": Task("boolq", re.compile(r"true|false")),
    "piqa": Task("piqa", re.compile(r"solution1|solution2")),
    "siqa": Task("social_i_qa", _ANSWER),
    "hellaswag": Task("hellaswag", re.compile(r"ending1|ending2|ending3|ending4")),
    "winogrande": Task("winogrande", re.compile(r"option1|option2")),
    "arc_e": Task("ARC-Easy", _ANSWER),
    "arc_c": Task("ARC-Challenge", _ANSWER),
    "obqa": Task("openbookqa", _ANSWER),
}


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str   # the training target, e.g. "the correct answer is true"
    answer: str   # the gold label, e.g. "true"


def read_records(path) -> list[Record]:
    """Every record of an LLM-Adapters JSON file; a malformed record is an error naming the file and index."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: commonsense data file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(raw).__name__}")
    records = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is a {type(r).__name__}, not an object")
        for key in FIELDS:
            if key not in r:
                raise ValueError(f"{path}: record {i} has no field '{key}'")
            if not isinstance(r[key], str):
                raise ValueError(f"{path}: record {i} field '{key}' is a {type(r[key]).__name__}, not a string")
        records.append(Record(*(r[key] for key in FIELDS)))
    return records


def prompt(record: Record) -> str:
    """The Alpaca prompt of a record, with its input section only when the input is non-empty (methods.md 8;
    alpaca.prompt would also drop a whitespace-only input, which no LLM-Adapters record has)."""
    if record.input:
        return alpaca.WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return alpaca.NO_INPUT.format(instruction=record.instruction)


def split_train_val(records: list, n_val: int = 120, seed: int = 42) -> tuple[list, list]:
    """(train, val) exactly as HF datasets' `train_test_split(test_size=n_val, seed=seed)` draws them:
    permutation = np.random.default_rng(seed).permutation(n); val = its first n_val rows, train the rest,
    both in permutation order."""
    if not 0 < n_val < len(records):
        raise ValueError(f"n_val = {n_val} must be between 1 and the {len(records)} records minus one")
    order = np.random.default_rng(seed).permutation(len(records)).tolist()
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def training_examples(tok, records: list[Record], max_tokens: int = 512, boundary: str = "official"):
    """(ids 1-D long tensor, n_masked) per record: prompt + output, the loss on the response and EOS."""
    special_ids(tok)  # fail early when the tokenizer has no EOS
    examples = []
    for r in records:
        ids, n_masked = build_example(tok, prompt(r), r.output, max_tokens, boundary)
        examples.append((torch.tensor(ids, dtype=torch.long), n_masked))
    return examples


def train_val_examples(path, tok, *, n_val: int = 120, seed: int = 42, max_tokens: int = 512,
                       boundary: str = "official", n_train: int | None = None):
    """The training file -> (train, val) example lists for data/tasks.py's CausalLMTask; `n_train` keeps only
    the first n_train training records (in permutation order; None: all), so a smoke run tokenises few."""
    train, val = split_train_val(read_records(path), n_val, seed)
    train = train if n_train is None else train[:n_train]
    return training_examples(tok, train, max_tokens, boundary), training_examples(tok, val, max_tokens, boundary)


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown commonsense task {name!r}; choices: {', '.join(TASKS)}")
    return TASKS[name]


def read_test_set(data_dir, name: str) -> list[Record]:
    """The task's records from <data_dir>/<its LLM-Adapters folder>/test.json."""
    return read_records(Path(data_dir) / _task(name).directory / "test.json")


def generation_prompt_ids(tok, record: Record) -> list[int]:
    """[BOS] + tok(prompt): what generation starts from (no EOS)."""
    return [special_ids(tok)[0]] + tok.encode(prompt(record))


def extract_answer(name: str, generation: str) -> str:
    """The first match of the task's label regex in the stripped generation, "" when there is none."""
    match = _task(name).pattern.search(generation.strip())
    return match.group(0) if match else ""


def score_task(name: str, records: list[Record], generations: list[str]) -> tuple[list[dict], dict]:
    """Per-example prediction records and the task's metrics (accuracy, correct, total)."""
    if len(records) != len(generations) or not records:
        raise ValueError(f"{name}: {len(records)} records and {len(generations)} generations (need equal, non-zero)")
    rows = []
    for i, (r, generation) in enumerate(zip(records, generations)):
        prediction = extract_answer(name, generation)
        rows.append({"task": name, "index": i, "instruction": r.instruction, "input": r.input,
                     "generation": generation, "prediction": prediction, "answer": r.answer,
                     "correct": prediction == r.answer})
    n_correct = sum(row["correct"] for row in rows)
    return rows, {"accuracy": n_correct / len(rows), "correct": n_correct, "total": len(rows)}


def summarise(per_task: dict[str, dict]) -> dict:
    """{"tasks": per-task metrics, "average": the unweighted mean of the task accuracies}, as Table 2 reports."""
    if not per_task:
        raise ValueError("no task metrics to summarise")
    return {"tasks": per_task, "average": sum(m["accuracy"] for m in per_task.values()) / len(per_task)}


def run(generate, tok, path, limit=0, subtasks=()) -> tuple[list[dict], dict]:
    """Score `generate` on the test sets of `subtasks` (default: all eight) under the folder `path`
    (data/benchmarks.py): the first `limit` records of each task (0: all), every prompt in one `generate`
    call so eval.py batches them by length across tasks. Every test file is read before anything is generated,
    so a missing one fails at once, naming its task."""
    names = list(subtasks) or list(TASKS)
    if len(set(names)) != len(names):
        raise ValueError(f"commonsense: a task is named twice in --tasks {','.join(names)}")
    test_sets = {}
    for name in names:
        try:
            records = read_test_set(path, name)
        except FileNotFoundError:
            raise FileNotFoundError(f"commonsense task {name!r}: no test file "
                                    f"{Path(path) / TASKS[name].directory / 'test.json'} (`python -m data.fetch "
                                    f"commonsense_eval` writes all eight under data_files/commonsense)") from None
        test_sets[name] = records[:limit] if limit else records
    prompts = [generation_prompt_ids(tok, r) for records in test_sets.values() for r in records]
    generations = iter(generate(prompts))
    rows, per_task = [], {}
    for name, records in test_sets.items():
        task_rows, per_task[name] = score_task(name, records, [next(generations) for _ in records])
        rows += task_rows
    return rows, summarise(per_task)
