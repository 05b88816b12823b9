"""The seam between eval.py and a generative benchmark: `BENCHMARKS` maps `--task` / `eval.task` names to them.

A benchmark owns its files, prompts and scoring; eval.py owns the model and decoding. Its `run` gets

    generate(prompts) -> texts    a list of prompt id lists in, one decoded continuation each out (EOS and
                                  the embedding's padding rows dropped), batched and length-sorted by eval.py
                                  with the decoding settings of the eval section (max_new_tokens, num_beams)
    tok, path, limit, subtasks    the tokenizer, the data file or folder, the first `limit` items (0: all),
                                  the benchmark's parts to run (commonsense tasks; empty: every part)

and returns (records, metrics): one JSON-able record per item, written as JSONL, and the metrics dict.
`defaults` are the eval-section values of the paper's set-up, used when no config of that task is given.
A benchmark whose records name the model (`names_model`: MT-Bench's answer file) also gets model_id=, the
run directory's name (or the bare checkpoint's folder name).
Data modules stay free of models/ and giva/: generation reaches them only as the `generate` callable.
"""
from dataclasses import dataclass
from typing import Callable

from data import commonsense
from data import gsm8k
from data import humaneval, mt_bench


@dataclass(frozen=True)
class Benchmark:
    run: Callable
    defaults: dict  # eval-section values: path, max_new_tokens, num_beams
    names_model: bool = False  # run(..., model_id=NAME)


BENCHMARKS = {
    "gsm8k": Benchmark(gsm8k.run, {"path": "../shared/data/gsm8k/test.jsonl", "max_new_tokens": 256, "num_beams": 1}),
    "commonsense": Benchmark(commonsense.run, {"path": "../shared/data/commonsense", "max_new_tokens": 32,
                                               "num_beams": 4}),
    "humaneval": Benchmark(humaneval.run, {"path": "../shared/data/humaneval/HumanEval.jsonl.gz",
                                           "max_new_tokens": 256, "num_beams": 4}),
    # FastChat gen_model_answer's defaults: greedy (the paper's), max_new_token 1024
    "mt_bench": Benchmark(mt_bench.run, {"path": "../shared/data/mt_bench/question.jsonl", "max_new_tokens": 1024,
                                         "num_beams": 1}, names_model=True),
}
