"""MetaMathQA (its original JSON list of {type, query, original_question, response}) -> tokenised splits.

Rows whose `type` contains "GSM" are kept and shuffled with a fixed seed, then split into n_train + n_val.
The official code called `.shuffle(seed=...)` and discarded the result, so its splits were contiguous
slices in file order (methods.md section 9, bug 15); our shuffle is real.

Tokenising 100,000 examples takes minutes, so the result is cached on disk as one safetensors file, keyed by
the content hashes of the data file and the tokenizer files plus every setting that changes it
(`cached_splits`, which the other causal-LM tasks use too).
"""
import hashlib
import json
import random
from pathlib import Path

import torch

from data.collate import build_example, special_ids
from data.gsm8k import prompt
from data.safetensors_io import load_safetensors, save_safetensors
from data.text_files import read_text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "config.json", "generation_config.json")
CACHE_FORMAT = 1  # bump when the tokenised layout or prompt changes


class TokenizedSplit:
    """A list-like view of tokenised examples: item i is (ids int32 tensor, n_masked)."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, n_masked: torch.Tensor):
        self.ids, self.offsets, self.n_masked = ids, offsets.tolist(), n_masked.tolist()

    def __len__(self):
        return len(self.n_masked)

    def __getitem__(self, i):
        return self.ids[self.offsets[i]:self.offsets[i + 1]], self.n_masked[i]

    def n_tokens(self) -> int:
        return self.offsets[-1] - self.offsets[0]


def read_gsm_rows(path) -> list[dict]:
    """The GSM-type records of a MetaMathQA JSON file, in file order; errors name the file and record."""
    path = Path(path)
    try:
        records = json.loads(read_text(path, "MetaMathQA"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    rows = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for key in ("type", "query", "response"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"{path}: record {i} has no string field '{key}'")
        if "GSM" in r["type"]:
            rows.append(r)
    return rows


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(data_path, tokenizer_dir, **settings) -> str:
    """`tokenizer_dir`: a checkpoint folder (its tokenizer files are hashed) or one .gguf file (hashed whole)."""
    parts = [f"format={CACHE_FORMAT}", f"data={_file_hash(Path(data_path))}"]
    parts += [f"{k}={v}" for k, v in sorted(settings.items())]
    if Path(tokenizer_dir).is_file():
        parts.append(f"tokenizer={_file_hash(Path(tokenizer_dir))}")
    for name in TOKENIZER_FILES:
        file = Path(tokenizer_dir) / name
        if file.is_file():
            parts.append(f"{name}={_file_hash(file)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def load_splits(data_path, tok, tokenizer_dir, *, n_train, n_val, max_tokens, shuffle_seed, cache_dir,
                boundary="official", read_rows=read_gsm_rows, source="metamath"):
    """(train, val) TokenizedSplits, from the on-disk cache when the same inputs were tokenised before.
    `boundary` is build_example's: how the prompt tokens to mask are counted. `read_rows(path)` -> the
    {query, response} rows; `source` names them in the cache file."""
    return cached_splits(source, data_path, tokenizer_dir, cache_dir, n_train,
                         lambda: _examples(read_rows(data_path), data_path, tok, n_train, n_val, max_tokens,
                                           shuffle_seed, boundary),
                         n_val=n_val, max_tokens=max_tokens, shuffle_seed=shuffle_seed, boundary=boundary)


def cached_splits(name, data_path, tokenizer_dir, cache_dir, n_train, make_examples, **settings):
    """(train, val) TokenizedSplits of make_examples() -> [(ids, n_masked)], the first n_train of them train
    and the rest validation, stored in cache_dir/<name>-<key>.safetensors and read back from there when the
    data file, the tokenizer files and `settings` are those of an earlier call (any causal-LM task)."""
    key = cache_key(data_path, tokenizer_dir, task=name, n_train=n_train, **settings)
    cache = Path(cache_dir) / f"{name}-{key}.safetensors"
    if not cache.is_file():
        save_safetensors(cache, _pack(make_examples(), n_train),
                         metadata={"source": str(data_path), "n_train": str(n_train)})
    t, _ = load_safetensors(cache)
    split = int(t["n_split"][0])
    ids, offsets, n_masked = t["ids"], t["offsets"], t["n_masked"]
    train = TokenizedSplit(ids, offsets[:split + 1], n_masked[:split])
    val = TokenizedSplit(ids, offsets[split:], n_masked[split:])
    return train, val


def _pack(examples, n_train) -> dict:
    """[(ids, n_masked)] -> the cache's flat tensors: ids, offsets (n + 1), n_masked, n_split."""
    ids, offsets, n_masked = [], [0], []
    for seq, masked in examples:
        ids.extend(seq)
        offsets.append(len(ids))
        n_masked.append(masked)
    return {"ids": torch.tensor(ids, dtype=torch.int32), "offsets": torch.tensor(offsets, dtype=torch.int64),
            "n_masked": torch.tensor(n_masked, dtype=torch.int32), "n_split": torch.tensor([n_train])}


def _examples(rows, data_path, tok, n_train, n_val, max_tokens, shuffle_seed, boundary) -> list:
    if len(rows) < n_train + n_val:
        raise ValueError(f"{data_path}: {len(rows)} GSM rows, fewer than data.n_train + data.n_val = {n_train + n_val}")
    order = list(range(len(rows)))
    random.Random(shuffle_seed).shuffle(order)
    special_ids(tok)  # fail early when the tokenizer has no EOS
    return [build_example(tok, prompt(rows[i]["query"]), rows[i]["response"], max_tokens, boundary)
            for i in order[:n_train + n_val]]
