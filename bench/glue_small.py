"""A small reproduction of the paper's Table 1 on all-MiniLM-L6-v2 and the GLUE dev files we have: a sweep that
runs train.py once per (task, method, seed) with `--set` overrides, and tabulates the runs' summary.json files.

    python bench/glue_small.py --out bench/glue_small.md               # every task, method and seed (GPU advised)
    python bench/glue_small.py --tasks rte mrpc --seeds 0 --device cpu  # a subset
    python bench/glue_small.py --smoke                                  # seconds on a CPU: the path works

There is no GLUE train set in ../shared/data/glue, so each task's dev file is split by a fixed seed
(split_seed, the same for every method and seed) into train (80%) and test (20%), written in the GLUE layout
(<Task>/train.tsv, <Task>/dev.tsv: header and rows of the original file) for train.py to read. Every run is
configs/demo.yaml's set-up (MiniLM from its package, the head trained fully through adapter.modules_to_save)
on that task with the method's overrides; the score is the best epoch's test metric (train.select_by:
val_metric, as the paper reports the best validation epoch), with the last epoch's beside it. Metrics:
accuracy (SST-2, MRPC, QNLI, RTE), Pearson (STS-B); CoLA is absent here.

Peer: the paper's Table 1 (RoBERTa-base/large, full GLUE train sets). This setting is far smaller (a
22M-parameter sentence encoder, a few hundred to a few thousand training examples), so it can show
whether the methods' ranking and parameter budgets carry over at small scale, and whether our GiVA,
VeRA and LoRA train at all; it cannot reproduce the paper's absolute numbers.
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from data.glue import glue_file, glue_task  # noqa: E402

# name -> (adapter overrides, learning rate). The paper's lr grid was lost; these are the usual values for
# each method on GLUE-sized encoders (GiVA: the README's 1e-2; VeRA paper ~1e-2; LoRA paper 4e-4).
METHODS = {
    "giva_topsv_r8": ({"method": "giva", "r": 8, "init": "topsv"}, 1e-2),
    "giva_secsv_r8": ({"method": "giva", "r": 8, "init": "secsv"}, 1e-2),
    "giva_rand_r8": ({"method": "giva", "r": 8, "init": "rand"}, 1e-2),
    "vera_r1024": ({"method": "vera", "r": 1024, "d_initial": 0.1}, 1e-2),
    "vera_r256": ({"method": "vera", "r": 256, "d_initial": 0.1}, 1e-2),
    "lora_r4": ({"method": "lora", "r": 4, "alpha": 8.0}, 4e-4),
    "full": ({"method": "full"}, 2e-5),
}
TASKS = ["sst2", "mrpc", "qnli", "rte", "stsb"]


def write_split(glue_root: Path, name: str, out: Path, seed: int, max_train: int) -> tuple[int, int]:
    """The task's dev file split 80/20 into out/<Task>/train.tsv and dev.tsv; (n_train, n_test)."""
    source = glue_file(glue_root, name)
    if source.suffix != ".tsv":
        raise SystemExit(f"{source}: only .tsv dev files can be split here")
    header, *rows = source.read_text(encoding="utf-8").splitlines(keepends=True)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = int(len(rows) * 0.2)
    test, trainset = [rows[i] for i in order[:n_test]], [rows[i] for i in order[n_test:]]
    trainset = trainset[:max_train] if max_train else trainset
    folder = out / glue_task(name).folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text(header + "".join(trainset), encoding="utf-8")
    (folder / "dev.tsv").write_text(header + "".join(test), encoding="utf-8")
    return len(trainset), len(test)


def run_one(name, method, seed, args, data_root: Path, out_dir: Path) -> dict:
    """train.py on configs/demo.yaml with this task, method and seed; its summary.json plus the run's facts."""
    adapter, lr = METHODS[method]
    sets = {"data.task": f"glue_{name}", "data.path": str(data_root), "data.max_tokens": 128,
            **{f"adapter.{k}": v for k, v in adapter.items()},
            "train.name": f"{name}_{method}_s{seed}", "train.out_dir": str(out_dir), "train.seed": seed,
            "adapter.svd_seed": seed, "adapter.vera_seed": seed, "adapter.lora_seed": seed,
            "train.device": args.device, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
            "train.micro_batch_size": args.batch_size, "train.lr": lr, "train.weight_decay": 0.01,
            "train.warmup_ratio": 0.06, "train.select_by": "val_metric", "train.val_per_epoch": 1}
    argv = [str(REPO / "configs/demo.yaml")] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    start = time.perf_counter()
    summary = train.main(argv)
    metric = glue_task(name).metric
    return {"task": name, "method": method, "seed": seed, "metric": metric, "best": summary[f"best_val_{metric}"],
            "last": summary[f"val_{metric}_after"], "before": summary[f"val_{metric}_before"],
            "adapter_params": summary["trainable_params"], "wall_s": time.perf_counter() - start,
            "command": "python train.py " + " ".join(argv[0:1] + [f"--set {k}={v}" for k, v in sets.items()])}


def table(results: list[dict], sizes: dict) -> str:
    def ms(values):
        values = [100 * v for v in values]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    lines = ["| task (metric, train/test) | method | adapter params | best epoch | last epoch | wall s / run |",
             "|---|---|---|---|---|---|"]
    groups = {}
    for r in results:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    for (task, method), rs in groups.items():
        r0 = rs[0]
        n_train, n_test = sizes[task]
        lines.append(f"| {task} ({r0['metric']}, {n_train}/{n_test}) | {method} | {r0['adapter_params']:,} | "
                     f"{ms([r['best'] for r in rs])} | {ms([r['last'] for r in rs])} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.1f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-train", type=int, default=0, help="> 0: cap the training examples per task")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="RTE, two methods, 64 examples, one epoch, one seed")
    p.add_argument("--out", help="write the markdown table (and a .jsonl of every run beside it)")
    args = p.parse_args()
    if args.smoke:
        args.tasks, args.methods, args.seeds, args.epochs, args.max_train = ["rte"], ["giva_secsv_r8", "lora_r4"], [0], 1, 64
    results, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root, out_dir = Path(tmp) / "glue", Path(tmp) / "runs"
        for name in args.tasks:
            sizes[name] = write_split(Path(args.glue), name, data_root, args.split_seed, args.max_train)
            for method in args.methods:
                for seed in args.seeds:
                    r = run_one(name, method, seed, args, data_root, out_dir)
                    print(json.dumps(r), flush=True)
                    results.append(r)
    text = table(results, sizes)
    print(text)
    if args.out:
        out = Path(args.out)
        header = (f"Command: `python bench/glue_small.py {' '.join(sys.argv[1:])}` on {args.device} "
                  f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), epochs "
                  f"{args.epochs}, batch {args.batch_size}, seeds {args.seeds}, split seed {args.split_seed}.\n\n")
        out.write_text(header + text + "\n")
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
