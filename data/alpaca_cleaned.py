"""alpaca-cleaned (yahma; one JSON array of {"instruction", "input", "output"}) -> training examples.

The official Alpaca training (methods.md section 8, "Alpaca -> MT-Bench"; section 9, item 19):
    prompt  = "### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n" (no preamble) when
              input.strip() is non-empty, else the no-input template with its preamble
    text    = BOS text + prompt + output + EOS text, tokenised without special tokens, first 1024 tokens kept
    labels  = the first len(tok(BOS text + prompt)) tokens masked
With a SentencePiece tokenizer whose BOS/EOS are split out of the text (Mistral's), that text tokenises to
[BOS] + tok(prompt + output) + [EOS], which is what `example_ids` builds; it keeps the FIRST max_tokens
tokens, where data/collate.py's build_example keeps the last.
The official right padding with pad = EOS and attention_mask = (ids != EOS) hides each row's final EOS as
a key, and no query after it is scored, so the loss equals that of an ordinary padded batch (an EOS inside
the text would be hidden too).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from data.alpaca import prompt as alpaca_prompt
from data.collate import special_ids


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str


def read_records(path) -> list[Record]:
    """Every record of the JSON array, in file order; errors name the file, record index and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: alpaca-cleaned file not found")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for key in ("instruction", "input", "output"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"{path}: record {i}: field '{key}' is missing or not a string")
        out.append(Record(r["instruction"], r["input"], r["output"]))
    return out


def prompt(record: Record) -> str:
    """The training prompt: no preamble with an input, the preamble without one."""
    return alpaca_prompt(record.instruction, record.input, preamble_with_input=False)


def example_ids(tok, record: Record, max_tokens: int = 1024) -> tuple[list[int], int]:
    """(ids, n_masked) of one training example: [BOS] + tok(prompt + output) + [EOS], the first max_tokens
    kept; the first n_masked = 1 + len(tok(prompt)) positions (capped at max_tokens) carry no loss."""
    bos, eos, _ = special_ids(tok)
    text_prompt = prompt(record)
    ids = [bos] + tok.encode(text_prompt + record.output) + [eos]
    return ids[:max_tokens], min(1 + len(tok.encode(text_prompt)), max_tokens)
