"""Tokenising speed on 100,000 MetaMathQA-sized examples (the target: under 3 minutes on a 2-core CPU).

    python bench/tokenize_speed.py <tokenizer dir> [--n 100000] [--data ../shared/data]

MetaMathQA itself is not available, so the examples are built from GSM8K train (7,473 problems):
example i is the prompt "Q: {query}\\nA: " with the question of problem i, and a response made of the
answers of problems i and i+1 (a few hundred tokens, like a MetaMathQA response). Each example is tokenised
twice, as the training data pipeline does: the prompt alone (for the loss mask) and prompt + response.
Because the texts repeat GSM8K's words, the word cache is warm after the first pass over the 7,473
problems; MetaMathQA (rephrased GSM8K/MATH problems) has a similar vocabulary. The peer figure is HF
`tokenizers` (Rust) on the same texts when it is installed.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_tokenizer  # noqa: E402


def build_examples(gsm8k_train: Path, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in gsm8k_train.read_text(encoding="utf-8").splitlines()]
    examples = []
    for i in range(n):
        a, b = rows[i % len(rows)], rows[(i + 1) % len(rows)]
        examples.append((f"Q: {a['question']}\nA: ", f"{a['answer']}\n\n{b['answer']}"))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    args = parser.parse_args()

    examples = build_examples(Path(args.data) / "gsm8k" / "train.jsonl", args.n)
    start = time.perf_counter()
    tok = load_tokenizer(args.tokenizer_dir)
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    n_tokens = 0
    for prompt, response in examples:
        tok.encode(prompt)
        n_tokens += len(tok.encode(prompt + response))
    ours_s = time.perf_counter() - start
    print(f"{args.tokenizer_dir}: load {load_s:.2f} s; {args.n} examples ({n_tokens / args.n:.0f} tokens each "
          f"on average) tokenised in {ours_s:.1f} s ({n_tokens / ours_s / 1e6:.2f} M tokens/s)")

    spec = Path(args.tokenizer_dir) / "tokenizer.json"
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    if spec.is_file():
        peer = Tokenizer.from_file(str(spec))
        start = time.perf_counter()
        for prompt, response in examples:
            peer.encode(prompt, add_special_tokens=False)
            peer.encode(prompt + response, add_special_tokens=False)
        print(f"peer: HF tokenizers (Rust), one text at a time, same texts: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
