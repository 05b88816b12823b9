"""GSM8K: the publisher's JSONL ({"question", "answer"}), the paper's prompt, and answer extraction.

Gold: the number after the LAST "####" of the answer, thousands commas removed (methods.md section 8).
Prediction: the FIRST "#### <number>" of a generation. The official regex had no thousands separators,
so "#### 1,234" was read as 1 (methods.md section 9, bug 16); ours accepts "1,234", "-3", "2.5" and ".5".
Both are compared as floats, as the official code does.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

from data.collate import special_ids
from data.text_files import read_text

PROMPT = "Q: {query}\nA: "

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_PREDICTION = re.compile(r"####\s*(" + _NUMBER + r")")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str      # the full worked answer, ending "#### N"
    target: float    # N as a float


def prompt(question: str) -> str:
    return PROMPT.format(query=question)


def parse_gold(answer: str) -> float:
    """The number after the last "####", commas removed; ValueError when there is none."""
    if "####" not in answer:
        raise ValueError("no '####' in the answer")
    text = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return float(text)


def extract_prediction(generation: str):
    """The first "#### <number>" of a generation as a float, or None when there is none."""
    match = _PREDICTION.search(generation)
    return float(match.group(1).replace(",", "")) if match else None


def read_problems(path) -> list[Problem]:
    """Every line of a GSM8K-format JSONL; a malformed line is an error naming the file and line."""
    path = Path(path)
    problems = []
    for line_no, line in enumerate(read_text(path, "GSM8K").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            question, answer = record["question"], record["answer"]
            if not isinstance(question, str) or not isinstance(answer, str):
                raise ValueError("'question' and 'answer' must be strings")
            problems.append(Problem(question, answer, parse_gold(answer)))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}, line {line_no}: malformed GSM8K record ({type(e).__name__}: {e})") from None
    return problems


def read_rows(path) -> list[dict]:
    """GSM8K problems as the {query, response} rows MetaMathQA's tokenising path reads (data/metamath.py)."""
    return [{"query": p.question, "response": p.answer} for p in read_problems(path)]


def run(generate, tok, path, limit=0, subtasks=()) -> tuple[list[dict], dict]:
    """Score `generate` on the problems of `path` (data/benchmarks.py): prompt [BOS] + tok("Q: ...\\nA: "), the
    first "#### <number>" of each generation against the gold answer."""
    if subtasks:
        raise ValueError(f"gsm8k has no parts to choose (got --tasks {','.join(subtasks)})")
    problems = read_problems(path)
    problems = problems[:limit] if limit else problems
    if not problems:
        raise ValueError(f"{path}: no GSM8K problems in the file (it is empty)")
    texts = [prompt(p.question) for p in problems]
    bos = special_ids(tok)[0]
    generations = generate([[bos] + tok.encode(text) for text in texts])
    records = []
    for text, problem, generation in zip(texts, problems, generations):
        prediction = extract_prediction(generation)
        records.append({"prompt": text, "generation": generation, "prediction": prediction,
                        "target": problem.target, "correct": prediction == problem.target})
    n_correct = sum(r["correct"] for r in records)
    return records, {"accuracy": n_correct / len(records), "correct": n_correct, "total": len(records)}
