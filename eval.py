"""Score a model, or base + a trained adapter merged into it: GSM8K with batched greedy generation, or a
classification run (the demo, GLUE, images) on its task's validation set (and test set, where the task has one).

    python eval.py --task gsm8k                             # the run configs/olmo2_metamath.yaml produces
    python eval.py --task gsm8k --run runs/tiny_math        # base + that run's adapter (best val loss), merged
    python eval.py --task gsm8k --model DIR                 # a bare publisher checkpoint
    python eval.py --run runs/demo --checkpoint last        # a classification run: its task's validation metrics
    python eval.py --run runs/dinov2_base_cifar100          # an image run: validation and test accuracy
    options: --limit N (first N problems), --batch-size B, --max-new-tokens N, --out FILE (predictions
             JSONL; the metrics JSON goes next to it as FILE.metrics.json), --data FILE (another GSM8K JSONL),
             --compile / --no-compile (compiled blocks for generation; default eval.compile)

Prompt [BOS] + tok("Q: {question}\\nA: ") as in training, greedy decoding of eval.max_new_tokens (256, the
paper's) new tokens, stopping at EOS; the prediction is the first "#### <number>" of the generation.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import giva
from data import load_tokenizer
from data.collate import special_ids
from data.gsm8k import extract_prediction, prompt, read_problems
from data.safetensors_io import atomic_file
from data.tasks import build_task
from experiment import ConfigError, EvalSection, ModelSection, TrainSection, ensure_inputs, load_experiment, runtime
from models import load_model
from models.generate import generate
from models.packaged_checkpoint import resolve_checkpoint_path

DEFAULT_CONFIG = "configs/olmo2_metamath.yaml"


def load_for_eval(model_path, run: Path | None, checkpoint: str, dtype, device, num_labels=None):
    """The base checkpoint, with `run`'s adapter (bases + `checkpoint` tensors) merged in when given."""
    if run is not None:
        vectors = run / f"{checkpoint}.safetensors"
        if not (run / "adapter.safetensors").is_file():
            raise FileNotFoundError(f"{run}: no trained run there (adapter.safetensors is missing)")
        if not vectors.is_file():
            raise FileNotFoundError(f"{vectors}: the run has no {checkpoint} checkpoint (has training finished?)")
    model = load_model(model_path, dtype=dtype, device=device, num_labels=num_labels)
    if run is not None:
        giva.load_adapter(model, run / "adapter.safetensors")  # bases + initial tensors
        giva.load_adapter(model, vectors)                     # the trained tensors replace the initial ones
        giva.merge_adapters(model)
    return model.eval()


def evaluate_gsm8k(model, tok, problems, *, max_new_tokens, batch_size, num_beams=1):
    """One record per problem (prompt, generation, prediction, target, correct) and the metrics."""
    bos, eos, pad = special_ids(tok)
    prompts = [prompt(p.question) for p in problems]
    ids = [[bos] + tok.encode(text) for text in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    outputs = [None] * len(ids)
    start, new_tokens = time.perf_counter(), 0
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        new = generate(model, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, num_beams=num_beams,
                       eos_id=eos, pad_id=pad)
        for i, tokens in zip(chunk, new):
            outputs[i] = tokens
            new_tokens += len(tokens)
    elapsed = time.perf_counter() - start
    records = []
    for text, problem, tokens in zip(prompts, problems, outputs):
        # Ids of an embedding's padding rows (OLMo-2: 100,278 tokens, 100,352 rows) have no text: dropped.
        generation = tok.decode([t for t in tokens if t != eos and t < tok.vocab_size])
        prediction = extract_prediction(generation)
        records.append({"prompt": text, "generation": generation, "prediction": prediction,
                        "target": problem.target, "correct": prediction == problem.target})
    n_correct = sum(r["correct"] for r in records)
    metrics = {"task": "gsm8k", "accuracy": n_correct / max(len(records), 1), "correct": n_correct,
               "total": len(records), "max_new_tokens": max_new_tokens, "num_beams": num_beams,
               "generation_time_s": elapsed, "new_tokens_per_s": new_tokens / max(elapsed, 1e-9)}
    return records, metrics


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["gsm8k"], help="gsm8k; leave out for a classification run's own task")
    parser.add_argument("--checkpoint", choices=["best", "last"], help="which trained vectors (default: eval.checkpoint)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="a run directory written by train.py")
    source.add_argument("--model", type=Path, help="a bare publisher checkpoint directory")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-new-tokens", type=int, help="default: the config's eval.max_new_tokens (256)")
    parser.add_argument("--out", type=Path, help="predictions JSONL (default: in the run directory)")
    parser.add_argument("--data", type=Path, help="a GSM8K-format JSONL (default: the config's eval.path)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="compile the blocks for generation (default: the config's eval.compile)")
    args = parser.parse_args(argv)
    if args.task is None:
        if args.run is None:
            parser.error("--task gsm8k, or --run DIR of a classification run")
        metrics = evaluate_classification_run(args.run, args.checkpoint or EvalSection().checkpoint)
        print(json.dumps(metrics))
        return metrics

    if args.model is not None:
        model_path, run, ev, exp = args.model, None, EvalSection(), None
        out = args.out or Path("runs") / f"{args.model.name}_{args.task}.jsonl"
    else:
        run = args.run
        exp = load_experiment(run / "config.yaml" if run is not None else DEFAULT_CONFIG)
        run = run if run is not None else exp.run_dir()
        model_path, ev = Path(exp.model.path), exp.eval
        out = args.out or run / f"{args.task}_predictions.jsonl"
    ev = replace(ev, limit=args.limit if args.limit is not None else ev.limit, checkpoint=args.checkpoint or ev.checkpoint,
                 batch_size=args.batch_size or ev.batch_size, path=str(args.data or ev.path),
                 max_new_tokens=args.max_new_tokens or ev.max_new_tokens,
                 compile=ev.compile if args.compile is None else args.compile)
    if exp is not None:
        ensure_inputs(exp)  # a smoke config's random checkpoint and synthetic problems, when missing

    device, dtype, _ = runtime(*((exp.model, exp.train) if exp is not None else (ModelSection(), TrainSection())))
    model = load_for_eval(model_path, run, ev.checkpoint, dtype, device)
    tok = load_tokenizer(resolve_checkpoint_path(model_path))
    if ev.compile:
        model.compile_blocks()
    problems = read_problems(ev.path)
    problems = problems[:ev.limit] if ev.limit else problems
    records, metrics = evaluate_gsm8k(model, tok, problems, max_new_tokens=ev.max_new_tokens,
                                      batch_size=ev.batch_size, num_beams=ev.num_beams)
    metrics.update(model=str(model_path), run=str(run) if run else None,
                   adapter=ev.checkpoint if run else None, data=ev.path)
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
        main()
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
