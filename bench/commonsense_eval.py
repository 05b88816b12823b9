"""Scoring the commonsense benchmark on the OLMo-2-7B shape: eval.py's own path (data/commonsense.py's prompts,
eval.batched_generator's length-sorted batches, beam 4, 32 new tokens) over the test sets in
../shared/data/commonsense (or $GIVA_DATA/commonsense), on random bf16 weights with the real OLMo-2 tokenizer, so every prompt has its
real length.

    python bench/commonsense_eval.py                  # OLMo-2-7B shape on CUDA: batch 64, compiled blocks
    python bench/commonsense_eval.py --no-compile --batch-size 32
    python bench/commonsense_eval.py --smoke          # tiny OLMo-2 shape (the real vocabulary), CPU, 2 per task

The seven test sets there hold 12,377 prompts (HellaSwag's 10,042 are not in ../shared/data). Random
weights almost never emit EOS, so every row runs all 32 steps: an upper bound on a trained model's time
(its answers, "the correct answer is true", end after about 8 tokens). One untimed call first (one prompt
per task: compilation, CUDA graph capture, allocator warm-up), then the timed call over every prompt, which
eval.py times the same way (`generation_time_s`: generation only; tokenising and scoring are timed apart).
Writes bench/results/commonsense_eval.json and prints the table last.
"""
import argparse
import importlib
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import common as C

from data import load_tokenizer
from data.commonsense import TASKS
from experiment import EvalSection

evaluation = importlib.import_module("eval")  # eval.py (the name `eval` is the builtin's)
SHARED = Path(os.environ.get("GIVA_DATA", C.REPO.parent / "shared" / "data"))  # as tests/conftest.py
TOKENIZER = SHARED / "tokenizers" / "olmo2" / "allenai_dolma2.json"
DATA = SHARED / "commonsense"
REAL_VOCAB = {k: C.OLMO2_7B[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}


def present_tasks(data: Path) -> list[str]:
    return [name for name, task in TASKS.items() if (data / task.directory / "test.json").is_file()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call (x 4 beams)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="Decoder.compile_blocks() first, as the configs' eval.compile (default on)")
    p.add_argument("--data", type=Path, default=DATA, help="the folder of <task>/test.json files")
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="OLMo-2's tokenizer.json")
    p.add_argument("--limit", type=int, default=0, help="first N prompts per task (0: all)")
    p.add_argument("--smoke", action="store_true", help="tiny OLMo-2 shape on CPU, 2 prompts per task")
    p.add_argument("--out", type=Path)
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    args = p.parse_args()
    for path in (args.tokenizer, args.data):
        if not path.exists():
            raise SystemExit(f"{path}: not found (the shared data folder)")
    tasks = present_tasks(args.data)
    if args.smoke:
        args.limit, args.batch_size, args.compile = 2, 4, False
    device = C.pick_device(args.device)
    (shape,) = C.shapes_for(["olmo2-7b"], args.smoke)
    shape = replace(shape, config={**shape.config, **REAL_VOCAB})  # the real tokenizer's ids fit the tiny shape

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = C.our_random_model(shape, device, C.weights_dtype(device), Path(tmp)).eval()
        shutil.copy(args.tokenizer, Path(tmp) / "tokenizer.json")
        tok = load_tokenizer(tmp)
    if args.compile:
        model.compile_blocks()
    ev = replace(EvalSection(), task="commonsense", path=str(args.data), max_new_tokens=32, num_beams=4,
                 batch_size=args.batch_size)

    start = time.perf_counter()
    with torch.no_grad():
        evaluation.evaluate_benchmark(model, tok, replace(ev, limit=1), tasks)
    warmup_s = time.perf_counter() - start
    C.reset_peak(device)
    start = time.perf_counter()
    with torch.no_grad():
        records, metrics = evaluation.evaluate_benchmark(model, tok, replace(ev, limit=args.limit), tasks)
    C.synchronize(device)
    total_s = time.perf_counter() - start
    gen_s = metrics["generation_time_s"]
    result = {"shape": shape.name, "tasks": {n: m["total"] for n, m in metrics["tasks"].items()},
              "prompts": len(records), "batch_size": args.batch_size, "num_beams": 4, "max_new_tokens": 32,
              "compiled": args.compile, "warmup_s": warmup_s, "generation_s": gen_s, "total_s": total_s,
              "prompts_per_s": len(records) / gen_s, "new_tokens_per_s": metrics["new_tokens_per_s"],
              "peak_gib": C.peak_gib(device), "machine": C.machine_info(device)}
    C.write_json(args.out or C.default_out("commonsense_eval", args.smoke), result)
    print(f"{len(records)} prompts of {len(tasks)} tasks, untimed first call {warmup_s:.1f} s", flush=True)
    C.print_table(["shape", "batch", "compiled", "prompts", "generation s", "total s", "prompts/s", "new tok/s",
                   "peak GiB"],
                  [[shape.name, args.batch_size, args.compile, len(records), C.fmt(gen_s, ".1f"),
                    C.fmt(total_s, ".1f"), C.fmt(result["prompts_per_s"], ".1f"),
                    C.fmt(result["new_tokens_per_s"]), C.fmt(result["peak_gib"], ".1f")]])
    return result


if __name__ == "__main__":
    main()
