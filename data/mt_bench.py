"""MT-Bench: the 80 two-turn questions, the Alpaca conversation prompt, the GPT-4-answer dev set used to pick
the learning rate, and the answer file FastChat's `gen_judgment` grades.

The prompt is FastChat's "alpaca" conversation (methods.md section 9, item 19: the official dev set has
exactly this format), the preamble, then per turn "### Instruction: {q}" and "### Response: {a}":
    PREAMBLE\\n\\n### Instruction: q1\\n\\n### Response: a1</s>### Instruction: q2\\n\\n### Response:
"</s>" is the template's literal separator; `encode` turns it into the tokenizer's id for "</s>" (Mistral's
EOS), as HF tokenizers split it out of the text, whatever our tokenizer's added tokens are.

Dev set (official datasets/mt-bench/dev_set.json, rebuilt from FastChat's reference_answer/gpt-4.jsonl;
the rebuilt 60 examples were checked equal, character for character, to that file of neerajgangwar/giva
@ 4b2763e): one example per turn of the 30 answered questions, prompt = the conversation up to that turn,
output = GPT-4's answer. The official loss tokenises prompt + " " + output with BOS and no EOS, and masks the
first len(tok(prompt + " ")) tokens (`dev_example_ids`); the score is the mean of the per-example mean
token losses.

Answers (`run`, eval.py's `--task mt_bench`): FastChat `gen_model_answer` JSONL, one record per question
    {"question_id": int, "answer_id": str, "model_id": str, "choices": [{"index": 0, "turns": [a1, a2]}],
     "tstamp": float}
"""
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from data.alpaca import PREAMBLE
from data.collate import special_ids
from data.safetensors_io import atomic_file
from data.text_files import read_jsonl

SEPARATOR = "\n\n"
TURN_END = "</s>"


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]


def _read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    return list(read_jsonl(path, f"MT-Bench {what}"))


def _field(path: Path, line_no: int, record: dict, key: str, kind):
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{path}, line {line_no}: field '{key}' is missing or not {kind.__name__}")
    return value


def _turns(path: Path, line_no: int, value, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{path}, line {line_no}: field '{key}' must be a non-empty list of strings")
    return tuple(value)


def read_questions(path) -> list[Question]:
    """FastChat's question.jsonl: {"question_id", "category", "turns": [...]} per line."""
    path = Path(path)
    return [Question(_field(path, n, r, "question_id", int), _field(path, n, r, "category", str),
                     _turns(path, n, r.get("turns"), "turns")) for n, r in _read_jsonl(path, "question")]


def read_answers(path) -> dict[int, tuple[str, ...]]:
    """question_id -> choices[0].turns of a gen_model_answer JSONL (reference or model answers)."""
    path = Path(path)
    answers = {}
    for n, r in _read_jsonl(path, "answer"):
        choices = r.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError(f"{path}, line {n}: field 'choices' must be a non-empty list of objects")
        answers[_field(path, n, r, "question_id", int)] = _turns(path, n, choices[0].get("turns"), "choices[0].turns")
    return answers


def conversation_prompt(questions: list[str], answers: list[str]) -> str:
    """The prompt for turn len(answers) + 1: every question, each answered turn closed by "</s>", and the
    last response open ("### Response:", no space), as FastChat's alpaca template renders it."""
    if len(questions) != len(answers) + 1:
        raise ValueError(f"{len(questions)} questions need {len(questions) - 1} answers, got {len(answers)}")
    text = PREAMBLE + SEPARATOR
    for question, answer in zip(questions, answers):
        text += f"### Instruction: {question}{SEPARATOR}### Response: {answer}{TURN_END}"
    return text + f"### Instruction: {questions[-1]}{SEPARATOR}### Response:"


def encode(tok, text: str) -> list[int]:
    """Token ids of `text` (no BOS), with each "</s>" the tokenizer's id for that token when it has one."""
    sep_id = tok.token_to_id(TURN_END)
    if sep_id is None:
        return tok.encode(text)
    ids = []
    for i, part in enumerate(text.split(TURN_END)):
        if i:
            ids.append(sep_id)
        if part:
            ids += tok.encode(part)
    return ids


def dev_set(questions: list[Question], reference: dict[int, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(prompt, output) per turn of every question with a reference answer, in question order."""
    examples = []
    for q in questions:
        if q.question_id not in reference:
            continue
        answers = reference[q.question_id]
        if len(answers) != len(q.turns):
            raise ValueError(f"question {q.question_id}: {len(q.turns)} turns but {len(answers)} reference answers")
        for k in range(len(q.turns)):
            examples.append((conversation_prompt(list(q.turns[:k + 1]), list(answers[:k])), answers[k]))
    return examples


def read_dev_set(question_path, reference_path) -> list[tuple[str, str]]:
    """The dev set from question.jsonl and reference_answer/gpt-4.jsonl (60 examples for FastChat's files)."""
    return dev_set(read_questions(question_path), read_answers(reference_path))


def dev_example_ids(tok, prompt: str, output: str) -> tuple[list[int], int]:
    """(ids, n_masked) as the official dev loss builds them: [BOS] + tok(prompt + " " + output), no EOS, the
    first 1 + len(tok(prompt + " ")) positions masked. With SentencePiece the prompt's trailing " " is a lone
    token that the full text merges into the answer's first word, so that word is masked too (methods.md
    section 9, item 18)."""
    bos, _, _ = special_ids(tok)
    return [bos] + encode(tok, f"{prompt} {output}"), 1 + len(encode(tok, f"{prompt} "))


def clean_answer(text: str, special_tokens=("<s>", "</s>", "<unk>")) -> str:
    """A decoded answer as gen_model_answer stores it: special-token strings removed, then stripped."""
    for token in special_tokens:
        text = text.replace(token, "")
    return text.strip()


def answer_record(question_id: int, model_id: str, turns: list[str], tstamp: float | None = None,
                  answer_id: str | None = None) -> dict:
    """One gen_model_answer record; answer_id defaults to a fresh random hex id, tstamp to now."""
    if not all(isinstance(t, str) for t in turns):
        raise ValueError(f"question {question_id}: every turn must be a string")
    return {"question_id": int(question_id), "answer_id": answer_id or uuid.uuid4().hex, "model_id": model_id,
            "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time() if tstamp is None else tstamp}


def write_answers(path, records: list[dict]) -> None:
    """The answer file, one JSON record per line sorted by question_id (as FastChat's reorg_answer_file),
    written atomically. FastChat reads it from data/mt_bench/model_answer/<model_id>.jsonl."""
    lines = "".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: r["question_id"]))
    with atomic_file(path) as f:
        f.write(lines.encode("utf-8"))


def run(generate, tok, path, limit=0, subtasks=(), *, model_id: str) -> tuple[list[dict], dict]:
    """Answer the questions of `path` (question.jsonl; data/benchmarks.py) as FastChat's gen_model_answer:
    turn 1 from conversation_prompt([q1], []), turn 2 from the conversation holding the model's own cleaned
    first answer; [BOS] + encode(prompt) each, one generate call per turn. subtasks: the categories to answer
    (empty: all). The records are the answer file's, sorted by question_id, named `model_id`."""
    questions = read_questions(path)
    if subtasks:
        unknown = sorted(set(subtasks) - {q.category for q in questions})
        if unknown:
            raise ValueError(f"{path}: no MT-Bench category {', '.join(unknown)} (categories: "
                             f"{', '.join(sorted({q.category for q in questions}))})")
        questions = [q for q in questions if q.category in subtasks]
    questions = sorted(questions, key=lambda q: q.question_id)
    questions = questions[:limit] if limit else questions
    if not questions:
        raise ValueError(f"{path}: no MT-Bench questions in the file (it is empty)")
    bos = special_ids(tok)[0]
    answers = [[] for _ in questions]
    for turn in range(max(len(q.turns) for q in questions)):
        asked = [i for i, q in enumerate(questions) if turn < len(q.turns)]
        prompts = [[bos] + encode(tok, conversation_prompt(list(questions[i].turns[:turn + 1]), answers[i]))
                   for i in asked]
        for i, text in zip(asked, generate(prompts)):
            answers[i].append(clean_answer(text))
    records = [answer_record(q.question_id, model_id, a) for q, a in zip(questions, answers)]
    return records, {"questions": len(records), "turns": sum(len(a) for a in answers), "model_id": model_id}
