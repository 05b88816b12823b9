"""The paper's comparison on real pretrained weights: SmolLM2-135M-Instruct (configs/smollm2_gsm8k.yaml) fine-tuned on
GSM8K train.jsonl with each method, scored on GSM8K test, through train.py and eval.py only.

    python bench/smollm2_gsm8k.py --out bench/results/smollm2_gsm8k.md      # every method, 3 seeds (GPU)
    python bench/smollm2_gsm8k.py --methods giva_secsv_r16 lora_r8 --seeds 0 1
    python bench/smollm2_gsm8k.py --middle-lr --seeds 0 --limit 64 --set data.n_train=128 ...  # a CPU-sized table
    python bench/smollm2_gsm8k.py --smoke                                   # seconds on a CPU: the path works
                                                    (a tiny random Llama checkpoint in place of SmolLM2)

1. Learning rate: for each method, train.py once per lr of its grid (seed 0); the lr of the lowest validation
   answer loss (best_val_loss: the split held out of train.jsonl by data.shuffle_seed) is kept. The test set
   plays no part in the choice.
2. Seeds: train.py at that lr for each seed (seed 0's run is reused), then eval.py --task gsm8k --run (the
   merged model's greedy accuracy on GSM8K test) and eval.py --run (val and test answer loss).
3. The untrained model: eval.py --task gsm8k --model (the bare checkpoint, nothing merged), same decoding.
Columns: method, rank, trainable parameters, GSM8K accuracy (mean ± std over seeds), test answer loss, the lr
chosen, training time and peak GPU memory per run, and the train.py command of each row.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import eval as evaluate  # noqa: E402
import train  # noqa: E402
from experiment import load_experiment  # noqa: E402

CONFIG = REPO / "configs" / "smollm2_gsm8k.yaml"
# name -> (adapter overrides, lr grid). Grids bracket each method's usual lr (GiVA/VeRA/OSoRA vectors ~1e-2,
# LoRA ~5e-4, full fine-tuning ~2e-5); the validation split picks within them.
METHODS = {
    "giva_topsv_r16": ({"method": "giva", "r": 16, "init": "topsv"}, [5e-3, 1e-2, 2e-2]),
    "giva_secsv_r16": ({"method": "giva", "r": 16, "init": "secsv"}, [5e-3, 1e-2, 2e-2]),
    "giva_rand_r16": ({"method": "giva", "r": 16, "init": "rand"}, [5e-3, 1e-2, 2e-2]),
    "vera_r256": ({"method": "vera", "r": 256, "d_initial": 1.0}, [5e-3, 1e-2, 2e-2]),
    "osora_r256": ({"method": "osora", "r": 256}, [5e-3, 1e-2, 2e-2]),
    "lora_r8": ({"method": "lora", "r": 8, "alpha": 16.0}, [2e-4, 5e-4, 1e-3]),
    "full": ({"method": "full"}, [1e-5, 2e-5, 5e-5]),
}


def _sets(args, name: str, adapter: dict, lr: float, seed: int, out_dir: Path) -> dict:
    sets = {**args.base_sets, **{f"adapter.{k}": v for k, v in adapter.items()},
            "train.name": name, "train.out_dir": str(out_dir), "train.seed": seed, "train.lr": lr,
            "adapter.svd_seed": seed, "adapter.vera_seed": seed, "adapter.lora_seed": seed, "probe.seed": seed}
    return sets


def run_train(args, name, adapter, lr, seed, out_dir) -> tuple[dict, str]:
    sets = _sets(args, name, adapter, lr, seed, out_dir)
    argv = [str(CONFIG)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    summary = train.main(argv)
    return summary, "python train.py " + " ".join([str(CONFIG.relative_to(REPO))] + [f"--set {k}={v}" for k, v in sets.items()])


def _gsm8k_args(args) -> list[str]:
    return ["--task", "gsm8k", *(["--limit", str(args.limit)] if args.limit else []), *args.eval_args]


def score(args, run: Path) -> dict:
    """GSM8K test accuracy (eval.py --task gsm8k --run) and the answer losses (eval.py --run) of a finished run."""
    accuracy = evaluate.main([*_gsm8k_args(args), "--run", str(run)])["accuracy"]
    losses = evaluate.main(["--run", str(run)])
    return {"accuracy": accuracy, "val_answer_loss": losses["val_answer_loss"],
            "test_answer_loss": losses["test_answer_loss"]}


def one_row(args, label, adapter, grid, out_dir: Path) -> dict:
    """Pick the lr on the validation split (seed 0), then train and score every seed at it."""
    trials = {}
    for lr in grid:
        summary, command = run_train(args, f"{label}_lr{lr:g}_s{args.seeds[0]}", adapter, lr, args.seeds[0], out_dir)
        trials[lr] = (summary, command)
        print(json.dumps({"method": label, "lr": lr, "best_val_loss": summary["best_val_loss"]}), flush=True)
    lr = min(trials, key=lambda x: trials[x][0]["best_val_loss"])
    runs = [(args.seeds[0], *trials[lr])]
    for seed in args.seeds[1:]:
        runs.append((seed, *run_train(args, f"{label}_lr{lr:g}_s{seed}", adapter, lr, seed, out_dir)))
    scored = []
    for seed, summary, command in runs:
        r = {**score(args, out_dir / summary["name"]), "seed": seed, "trainable": summary["trainable_params"],
             "train_time_s": summary["train_time_s"], "peak_gpu_mem_gib": summary.get("peak_gpu_mem_gib"),
             "command": command}
        print(json.dumps({"method": label, **r}), flush=True)
        scored.append(r)
    return {"method": label, "rank": adapter.get("r", "-"), "lr": lr,
            "lr_grid": {f"{x:g}": trials[x][0]["best_val_loss"] for x in grid}, "runs": scored}


def untrained_row(args, out_dir: Path) -> dict:
    """The bare checkpoint scored by eval.py --task gsm8k --model with the same decoding: no training, no loss."""
    model = args.base_sets.get("model.path") or load_experiment(CONFIG).model.path
    data = ["--data", args.base_sets["eval.path"]] if "eval.path" in args.base_sets else []
    argv = [*_gsm8k_args(args), "--model", str(model), *data, "--out", str(out_dir / "untrained_gsm8k.jsonl")]
    accuracy = evaluate.main(argv)["accuracy"]
    run = {"accuracy": accuracy, "test_answer_loss": None, "seed": None, "trainable": 0, "train_time_s": None,
           "peak_gpu_mem_gib": None, "command": "python eval.py " + " ".join(argv)}
    print(json.dumps({"method": "untrained", **run}), flush=True)
    return {"method": "untrained", "rank": "-", "lr": None, "lr_grid": {}, "runs": [run]}


def _ms(values, scale=1.0, digits=1) -> str:
    if None in values:
        return "-"
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| method | rank | trainable params | lr (val-chosen) | GSM8K acc % | test answer loss | "
             "train time s | peak GPU GiB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = row["runs"]
        mem = [r["peak_gpu_mem_gib"] for r in runs if r["peak_gpu_mem_gib"] is not None]
        lr = "-" if row["lr"] is None else f"{row['lr']:g}"
        lines.append(f"| {row['method']} | {row['rank']} | {runs[0]['trainable']:,} | {lr} | "
                     f"{_ms([r['accuracy'] for r in runs], 100)} | {_ms([r['test_answer_loss'] for r in runs], digits=4)} | "
                     f"{_ms([r['train_time_s'] for r in runs])} | {_ms(mem, digits=2) if mem else '-'} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=0, help="> 0: only the first N GSM8K test problems for accuracy")
    p.add_argument("--middle-lr", action="store_true",
                   help="no lr choice: each method at the middle of its grid (a CPU-sized run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an extra override for every train.py run (e.g. train.epochs=1)")
    p.add_argument("--smoke", action="store_true", help="a tiny random Llama, two methods, two lrs, one seed, a few "
                                                        "examples and steps")
    p.add_argument("--out", help="write the markdown table (and a .jsonl of every run beside it)")
    args = p.parse_args()
    args.base_sets = {"train.device": args.device}
    args.eval_args = []
    extra = dict(item.partition("=")[::2] for item in args.set)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.smoke:
            test, source = tmp / "test.jsonl", extra.get("eval.path") or load_experiment(CONFIG).eval.path
            test.write_text("".join(Path(source).read_text().splitlines(True)[:2]))
            args.methods, args.seeds, args.limit = ["giva_secsv_r16", "lora_r8"], [0], 2
            args.base_sets.update({"model.path": str(tmp / "tiny_llama"), "model.random_init": "{family: llama, seed: 0}",
                                   "data.n_train": 8, "data.n_val": 4, "data.max_tokens": 32, "train.batch_size": 4,
                                   "train.micro_batch_size": 4, "train.max_steps": 2, "train.val_per_epoch": 1,
                                   "data.cache_dir": str(tmp / "cache"), "eval.path": str(test),
                                   "train.cpu_threads": 2})
            args.eval_args = ["--max-new-tokens", "4", "--batch-size", "2"]
        args.base_sets.update({k: v for k, v in extra.items() if not (args.smoke and k == "eval.path")})
        grids = {m: METHODS[m][1][:2] if args.smoke else [METHODS[m][1][1]] if args.middle_lr else METHODS[m][1]
                 for m in args.methods}
        rows = [one_row(args, m, METHODS[m][0], grids[m], tmp / "runs") for m in args.methods]
        rows.insert(0, untrained_row(args, tmp))  # after a train.py run has written a smoke run's random checkpoint
    text = table(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        header = f"Command: `python bench/smollm2_gsm8k.py {' '.join(sys.argv[1:])}` on {args.device} ({device}).\n\n"
        commands = "".join(f"- {row['method']}: `{row['runs'][0]['command']}`\n" for row in rows)
        out.write_text(header + text + "\n\nThe command of each row (seed 0; the others change train.seed and "
                       "the adapter seeds):\n\n" + commands)
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
