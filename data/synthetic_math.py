"""Synthetic GSM-style word problems, written by us, for tests and the tiny smoke config.

Each problem is a short story with two or three arithmetic steps, a worked answer with GSM8K's calculator
annotations (<<a+b=c>>) and a final "#### N". `write_metamath_json` writes them in MetaMathQA's record
format (type, query, original_question, response ending "#### N\\nThe answer is: N"), with every fifth
record of a MATH_* type so the GSM filter is exercised; `write_gsm8k_jsonl` writes GSM8K's format.

    python -m data.synthetic_math OUT_DIR [N]    # OUT_DIR/metamath.json and OUT_DIR/gsm8k.jsonl
"""
import json
import random
import sys
from pathlib import Path

from data.safetensors_io import atomic_file

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "stamps"]


def _shop(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 5)
    s = a + b
    c = min(c, s)
    question = (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend. "
                f"How many {item} does {name} have now?")
    steps = [f"After buying, {name} has {a} + {b} = <<{a}+{b}={s}>>{s} {item}.",
             f"After giving {c} away, {name} has {s} - {c} = <<{s}-{c}={s - c}>>{s - c} {item}."]
    return question, steps, s - c


def _price(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n, p, k = rng.randint(2, 12), rng.randint(2, 25), rng.randint(2, 4)
    cost = n * p
    question = (f"{name} buys {n} packs of {item} at ${p} each, {k} times this month. "
                f"How many dollars does {name} spend this month?")
    steps = [f"One shopping trip costs {n} * {p} = $<<{n}*{p}={cost}>>{cost}.",
             f"Over {k} trips that is {cost} * {k} = $<<{cost}*{k}={cost * k}>>{cost * k}."]
    return question, steps, cost * k


def _share(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(0, 20)
    total = friends * each + extra
    question = (f"{name} has {total} {item} and keeps {extra} of them. The rest are shared equally among "
                f"{friends} friends. How many {item} does each friend get?")
    steps = [f"{name} shares {total} - {extra} = <<{total}-{extra}={total - extra}>>{total - extra} {item}.",
             f"Each friend gets {total - extra} / {friends} = <<{total - extra}/{friends}={each}>>{each} {item}."]
    return question, steps, each


def _savings(rng):
    name = rng.choice(NAMES)
    weekly, weeks, spent = rng.randint(5, 90), rng.randint(4, 52), rng.randint(10, 200)
    saved = weekly * weeks
    question = (f"{name} saves ${weekly} every week for {weeks} weeks and then spends ${spent} on a bike. "
                f"How many dollars are left?")
    steps = [f"{name} saves {weekly} * {weeks} = $<<{weekly}*{weeks}={saved}>>{saved}.",
             f"After the bike, {saved} - {spent} = $<<{saved}-{spent}={saved - spent}>>{saved - spent} are left."]
    return question, steps, saved - spent


TEMPLATES = [_shop, _price, _share, _savings]


def _format_number(n: int) -> str:
    return f"{n:,}"  # thousands commas, as some GSM8K answers have


def make_problems(n: int, seed: int = 0) -> list[dict]:
    """n problems as dicts {question, steps, answer}; the same seed always gives the same problems."""
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        question, steps, answer = TEMPLATES[i % len(TEMPLATES)](rng)
        problems.append({"question": question, "steps": steps, "answer": answer})
    return problems


def to_gsm8k(problem: dict) -> dict:
    return {"question": problem["question"],
            "answer": "\n".join(problem["steps"]) + f"\n#### {_format_number(problem['answer'])}"}


def to_metamath(problem: dict, index: int) -> dict:
    kind = "MATH_AnsAug" if index % 5 == 4 else ["GSM_AnsAug", "GSM_Rephrased", "GSM_SV", "GSM_FOBAR"][index % 4]
    answer = problem["answer"]
    return {"type": kind, "query": problem["question"], "original_question": problem["question"],
            "response": "\n".join(problem["steps"]) + f"\n#### {answer}\nThe answer is: {answer}"}


def write_metamath_json(path, n: int, seed: int = 0):
    records = [to_metamath(p, i) for i, p in enumerate(make_problems(n, seed))]
    with atomic_file(path, "w") as f:
        json.dump(records, f, indent=1)


def write_gsm8k_jsonl(path, n: int, seed: int = 1):
    with atomic_file(path, "w") as f:
        for p in make_problems(n, seed):
            f.write(json.dumps(to_gsm8k(p)) + "\n")


def ensure_synthetic_files(metamath_path, gsm8k_path, n: int):
    """Write n training problems and n // 10 (at least 10) test problems where the files are missing."""
    if not Path(metamath_path).is_file():
        write_metamath_json(metamath_path, n)
    if not Path(gsm8k_path).is_file():
        write_gsm8k_jsonl(gsm8k_path, max(n // 10, 10))


if __name__ == "__main__":
    out, count = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    ensure_synthetic_files(out / "metamath.json", out / "gsm8k.jsonl", count)
    print(f"wrote {out / 'metamath.json'} and {out / 'gsm8k.jsonl'}")
