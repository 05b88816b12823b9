"""Synthetic Code-Feedback and alpaca-cleaned files, written by us, for tests and the tiny smoke configs.

Code-Feedback rows ({"query", "answer"} JSONL) ask for a small Python function and answer with prose, one
fenced block and a trailing explanation (which data/code_feedback.cut_answer cuts off); every seventh
answer has no fence. alpaca-cleaned records ({"instruction", "input", "output"}, one JSON array) are short
arithmetic and word tasks, every third with an input. The same n and seed always give the same files.
"""
import json
import random
from pathlib import Path

from data.safetensors_io import atomic_file

OPS = [("add", "+", "the sum of"), ("sub", "-", "the difference of"), ("mul", "*", "the product of")]
WORDS = ["apple", "river", "pencil", "cloud", "garden", "window", "rocket", "violin"]


def code_feedback_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, op, words = OPS[i % len(OPS)]
        k = rng.randint(1, 9)
        query = f"Write a Python function `{name}_{k}(x)` that returns {words} x and {k}."
        code = f"def {name}_{k}(x):\n    return x {op} {k}"
        if i % 7 == 6:
            answer = f"Return x {op} {k} from a function named {name}_{k}."
        else:
            answer = f"Here is the function:\n```python\n{code}\n```\nIt uses the {op} operator once."
        rows.append({"query": query, "answer": answer})
    return rows


def alpaca_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        if i % 3 == 2:
            word = rng.choice(WORDS)
            records.append({"instruction": "Spell the word backwards.", "input": word, "output": word[::-1]})
        else:
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            records.append({"instruction": f"What is {a} plus {b}?", "input": "",
                            "output": f"{a} plus {b} is {a + b}."})
    return records


def ensure_code_feedback_file(path, n: int):
    """n synthetic Code-Feedback rows at `path` (JSONL) when it is missing."""
    if not Path(path).is_file():
        with atomic_file(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in code_feedback_rows(n))


def ensure_alpaca_file(path, n: int):
    """n synthetic alpaca-cleaned records at `path` (a JSON array) when it is missing."""
    if not Path(path).is_file():
        with atomic_file(path, "w") as f:
            json.dump(alpaca_records(n), f, indent=1)
