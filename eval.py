"""Score a model, or base + a trained adapter merged into it: a generative benchmark (data/benchmarks.py:
GSM8K, ...) with batched generation, or a classification run (the demo, GLUE, images) on its task's validation
set (and test set, where the task has one).

    python eval.py --task gsm8k                             # the run configs/olmo2_metamath.yaml produces
    python eval.py --task gsm8k --run runs/tiny_math        # base + that run's adapter (best val loss), merged
    python eval.py --task gsm8k --model DIR                 # a bare publisher checkpoint
    python eval.py --task commonsense --run runs/tiny_commonsense --tasks boolq,piqa --limit 8   # some of the 8 tasks
    python eval.py --task humaneval --run runs/olmo2_code   # pass@1, each completion run in the sandbox
    python eval.py --task mt_bench --run runs/mistral_alpaca  # FastChat's answer file, model_id = the run's name
    python eval.py --run runs/demo --checkpoint last        # a classification run: its task's validation metrics
    python eval.py --run runs/dinov2_base_cifar100          # an image run: validation and test accuracy
    options: --limit N (first N problems), --tasks a,b (a benchmark's parts), --batch-size B,
             --max-new-tokens N, --num-beams K, --out FILE (predictions JSONL; the metrics JSON goes next to it
             as FILE.metrics.json), --data PATH (the benchmark's file or folder), --compile / --no-compile
             (compiled blocks for generation; default eval.compile)

Decoding comes from the run config's eval section when it names this benchmark, else from the benchmark's
own set-up (GSM8K: greedy, 256 new tokens, the paper's), stopping at EOS; the benchmark builds the prompts
as in training and scores the generations (GSM8K: the first "#### <number>").
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import distributed
import giva
from data import load_tokenizer
from data.benchmarks import BENCHMARKS
from data.collate import special_ids
from data.safetensors_io import atomic_file
from data.tasks import build_task
from experiment import EvalSection, ModelSection, TrainSection, cli, ensure_inputs, load_experiment, runtime
from models import load_model
from models.generate import generate
from data.packaged_checkpoint import resolve_checkpoint_path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs/olmo2_metamath.yaml"


def load_for_eval(model_path, run: Path | None, checkpoint: str, dtype, device, num_labels=None,
                  allow_other_base=False, merge=True):
    """The base checkpoint, with `run`'s adapter (bases + `checkpoint` tensors) merged in when given
    (merge=False: loaded beside the weights, as trained)."""
    if run is not None:
        vectors = run / f"{checkpoint}.safetensors"
        if not (run / "adapter.safetensors").is_file():
            raise FileNotFoundError(f"{run}: no trained run there (adapter.safetensors is missing)")
        if not vectors.is_file():
            raise FileNotFoundError(f"{vectors}: the run has no {checkpoint} checkpoint (has training finished?)")
    model = load_model(model_path, dtype=dtype, device=device, num_labels=num_labels)
    if run is not None:
        giva.load_adapter(model, run / "adapter.safetensors", allow_other_base=allow_other_base)  # bases, initial
        giva.load_adapter(model, vectors, allow_other_base=allow_other_base)  # the trained tensors replace them
        if merge:
            giva.merge_adapters(model)
    return model.eval()


def batched_generator(model, tok, *, max_new_tokens, num_beams, batch_size, stats: dict):
    """generate(prompts) -> texts for a benchmark (data/benchmarks.py): prompts sorted by length (less padding),
    batches of `batch_size`, EOS and the embedding's padding rows (OLMo-2: 100,278 tokens, 100,352 rows) dropped.
    `stats` accumulates the new tokens and seconds spent."""
    _, eos, pad = special_ids(tok)

    def generate_texts(prompts: list[list[int]]) -> list[str]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        mine = {}  # prompt index -> (text, new tokens) of this rank's batches (every batch under one process)
        start = time.perf_counter()
        bar = tqdm(total=len(prompts), unit="prompt", desc="generate", dynamic_ncols=True, leave=False,
                   disable=not distributed.is_main())
        for chunk in distributed.share(chunks):
            new = generate(model, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens, num_beams=num_beams,
                           eos_id=eos, pad_id=pad)
            for i, tokens in zip(chunk, new):
                mine[i] = (tok.decode([t for t in tokens if t != eos and t < tok.vocab_size]), len(tokens))
            bar.update(len(chunk) * distributed.world())
        bar.close()
        done = {i: r for part in distributed.gather_objects(mine) for i, r in part.items()}  # in prompt order below
        stats["new_tokens"] += sum(n for _, n in done.values())
        stats["generation_time_s"] += time.perf_counter() - start
        return [done[i][0] for i in range(len(prompts))]
    return generate_texts


def evaluate_benchmark(model, tok, ev: EvalSection, subtasks=(), model_id: str | None = None) -> tuple[list[dict], dict]:
    """Run benchmark `ev.task` on `model` with the eval section's decoding; (records, metrics). `model_id`
    names the model in the records of a benchmark that names it (MT-Bench's answer file)."""
    stats = {"new_tokens": 0, "generation_time_s": 0.0}
    generate_texts = batched_generator(model, tok, max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams,
                                       batch_size=ev.batch_size, stats=stats)
    bench = BENCHMARKS[ev.task]
    if bench.names_model and not model_id:
        raise ValueError(f"benchmark {ev.task} names the model in its records: give evaluate_benchmark a model_id")
    named = {"model_id": model_id} if bench.names_model else {}
    records, metrics = bench.run(generate_texts, tok, ev.path, ev.limit, tuple(subtasks), **named)
    return records, {"task": ev.task, **metrics, "max_new_tokens": ev.max_new_tokens, "num_beams": ev.num_beams,
                     "generation_time_s": stats["generation_time_s"],
                     "new_tokens_per_s": stats["new_tokens"] / max(stats["generation_time_s"], 1e-9)}


@torch.no_grad()
def evaluate_classification_run(run: Path, checkpoint: str) -> dict:
    """A classification run scored as train.py scored it: base + adapter (the trained head included), merged,
    on the device and in the precision its config asks for; on the task's test split too when it has one."""
    exp = load_experiment(run / "config.yaml")
    device, dtype, autocast = runtime(exp.model, exp.train)
    path = resolve_checkpoint_path(exp.model.path)
    task = build_task(exp, path)
    model = load_for_eval(path, run, checkpoint, dtype, device, num_labels=task.num_labels)
    splits = {"val": task.val, **({"test": task.test} if hasattr(task, "test") else {})}
    with autocast():
        metrics = {f"{split}_{k}": v for split, items in splits.items() for k, v in task.evaluate(model, items).items()}
    return {"task": exp.data.task, "run": str(run), "adapter": checkpoint, **metrics}


def _at_least(lowest: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is below {lowest}")
        return value
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(BENCHMARKS),
                        help="a generative benchmark; leave out for a classification run's own task")
    parser.add_argument("--tasks", type=lambda s: [t for t in s.split(",") if t],
                        help="comma-separated parts of the benchmark (commonsense: boolq,piqa,...); default all")
    parser.add_argument("--checkpoint", choices=["best", "last"], help="which trained vectors (default: eval.checkpoint)")
    parser.add_argument("--run", type=Path, help="a run directory written by train.py")
    parser.add_argument("--model", type=Path, help="a publisher checkpoint directory: scored bare, or with --run the "
                                                   "base the run's adapter is merged into (another copy of its base)")
    parser.add_argument("--allow-other-base", action="store_true",
                        help="merge the run's adapter into a base other than the one it was trained on")
    parser.add_argument("--limit", type=_at_least(0), help="only the first N problems (per part); 0: all")
    parser.add_argument("--batch-size", type=_at_least(1), help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=_at_least(1), help="default: eval.max_new_tokens, else the benchmark's")
    parser.add_argument("--num-beams", type=_at_least(1), help="default: eval.num_beams, else the benchmark's")
    parser.add_argument("--out", type=Path, help="predictions JSONL (default: in the run directory)")
    parser.add_argument("--data", type=Path, help="the benchmark's data file or folder (default: eval.path)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="compile the blocks for generation (default: the config's eval.compile)")
    args = parser.parse_args(argv)
    if args.task is None:
        if args.run is None:
            parser.error("--task NAME, or --run DIR of a classification run")
        metrics = evaluate_classification_run(args.run, args.checkpoint or EvalSection().checkpoint)
        print(json.dumps(metrics))
        return metrics

    exp, run = None, args.run
    if args.model is None or run is not None:
        exp = load_experiment(run / "config.yaml" if run is not None else DEFAULT_CONFIG)
        run = run if run is not None else exp.run_dir()
    model_path = args.model or Path(exp.model.path)
    # The config's eval section when it is for this benchmark, else the benchmark's own set-up.
    ev = exp.eval if exp is not None and exp.eval.task == args.task else \
        replace(EvalSection(), task=args.task, **BENCHMARKS[args.task].defaults)
    ev = replace(ev, limit=args.limit if args.limit is not None else ev.limit, checkpoint=args.checkpoint or ev.checkpoint,
                 batch_size=args.batch_size or ev.batch_size, path=str(args.data or ev.path),
                 max_new_tokens=args.max_new_tokens or ev.max_new_tokens, num_beams=args.num_beams or ev.num_beams,
                 compile=ev.compile if args.compile is None else args.compile)
    out = args.out or (Path("runs") / f"{args.model.name}_{args.task}.jsonl" if run is None
                       else run / f"{args.task}_{ev.checkpoint}_predictions.jsonl")
    device, dtype, _ = runtime(*((exp.model, exp.train) if exp is not None else (ModelSection(), TrainSection())))
    device = distributed.setup(device)  # under torchrun: the prompts' batches are divided among the ranks
    if exp is not None:
        with distributed.main_first():
            ensure_inputs(exp)  # a smoke config's random checkpoint and synthetic problems, when missing
    model = load_for_eval(model_path, run, ev.checkpoint, dtype, device, allow_other_base=args.allow_other_base)
    tok = load_tokenizer(resolve_checkpoint_path(model_path))
    if ev.compile:
        model.compile_blocks()
    records, metrics = evaluate_benchmark(model, tok, ev, args.tasks or (),
                                          model_id=run.name if run is not None else model_path.name)
    metrics.update(model=str(model_path), run=str(run) if run else None,
                   adapter=ev.checkpoint if run else None, data=ev.path)
    if not distributed.is_main():
        return metrics
    with atomic_file(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    metrics_path = out.with_name(out.name + ".metrics.json")
    with atomic_file(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"wrote {out} and {metrics_path}")
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    try:
        cli(main)
    finally:
        distributed.shutdown()
