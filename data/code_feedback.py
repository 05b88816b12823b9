"""CodeFeedback-Filtered-Instruction (m-a-p; JSONL of {"query", "answer", ...}) -> (prompt, output) pairs.

The official code's shuffle result is discarded (methods.md section 9, item 15), so its split is contiguous
in file order: rows 0-99,999 train, rows 100,000-109,999 validate. We keep that split: it is the data
the paper trained on.
    prompt = the no-input Alpaca template with instruction = query
    output = the answer cut after its first fenced block: the text before the first ``` fence, the block
             and a closing ```. An answer without a fence gets a stray ``` appended (item 20), as the
             official `"```".join(answer.split("```")[:2]) + "```"` does.
The pairs go through data/collate.py's build_example like MetaMathQA's.
"""
from pathlib import Path

from data.alpaca import prompt as alpaca_prompt
from data.text_files import read_jsonl

FENCE = "```"
TRAIN_ROWS = range(0, 100_000)
VAL_ROWS = range(100_000, 110_000)


def cut_answer(answer: str) -> str:
    """The answer up to and including the end of its first fenced block, then a closing fence."""
    return FENCE.join(answer.split(FENCE)[:2]) + FENCE


def example(query: str, answer: str) -> tuple[str, str]:
    """(prompt, output) of one row."""
    return alpaca_prompt(query), cut_answer(answer)


def read_rows(path, n_rows: int | None = None) -> list[tuple[str, str]]:
    """(query, answer) of the first n_rows rows (all when None), in file order; blank lines are skipped.
    Errors name the file and line: malformed JSON, a missing or non-string field, too few rows."""
    path = Path(path)
    rows = []
    for line_no, record in read_jsonl(path, "CodeFeedback-Filtered-Instruction"):
        if n_rows is not None and len(rows) == n_rows:
            break
        for key in ("query", "answer"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"{path}, line {line_no}: field '{key}' is missing or not a string")
        rows.append((record["query"], record["answer"]))
    if n_rows is not None and len(rows) < n_rows:
        raise ValueError(f"{path}: {len(rows)} rows, fewer than the {n_rows} needed")
    return rows


def read_splits(path, train_rows: range = TRAIN_ROWS, val_rows: range = VAL_ROWS):
    """(train, val) lists of (prompt, output), the official contiguous row ranges by default."""
    rows = read_rows(path, max(train_rows.stop, val_rows.stop))
    return [example(*rows[i]) for i in train_rows], [example(*rows[i]) for i in val_rows]
