"""Compare finished runs: one table row per run directory, and optionally their loss curves as a PNG.

    python runs.py                      # every run under runs/
    python runs.py runs/glue runs/demo  # run directories, or folders holding them
    python runs.py --plot curves.png    # training and validation loss per step (needs matplotlib)

A row: the run's name, method, rank and init (from its config.yaml), trainable parameters, steps, the best
validation loss and its step, the task metrics after training (summary.json's val_*_after), tokens/s and
training time. Runs that have not finished (no summary.json) are listed as such.
"""
import argparse
import json
from pathlib import Path

import yaml

from experiment import cli


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding config.yaml) at or directly under each path, sorted by name."""
    found = set()
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
        found.update(p.parent for p in [path / "config.yaml", *path.glob("*/config.yaml")] if p.is_file())
    return sorted(found)


def row(run: Path) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    adapter = config.get("adapter", {})
    out = {"run": str(run), "method": adapter.get("method"), "r": adapter.get("r"), "init": adapter.get("init")}
    summary_file = run / "summary.json"
    if not summary_file.is_file():
        return {**out, "note": "not finished (no summary.json)"}
    s = json.loads(summary_file.read_text())
    metrics = {k.removeprefix("val_").removesuffix("_after"): v for k, v in s.items() if k.endswith("_after")}
    return {**out, "trainable": s.get("trainable_params"), "steps": s.get("steps"),
            "best_val_loss": s.get("best_val_loss"), "best_step": s.get("best_step"), **metrics,
            "tokens_per_s": s.get("tokens_per_s"), "train_time_s": s.get("train_time_s")}


def table(rows: list[dict]) -> str:
    """A Markdown table over the union of the rows' keys, in first-seen order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return "" if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def plot(runs: list[Path], out: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
            if (run / "metrics.jsonl").is_file() else []
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        for points, style, kind in ((train, "-", "train"), (val, "o--", "val")):
            if points:
                ax.plot(*zip(*points), style, label=f"{run.name} {kind}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.legend(fontsize="small")
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("runs")])
    parser.add_argument("--plot", type=Path, help="write the loss curves to this PNG")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        raise FileNotFoundError(f"no run directories (with config.yaml) in {', '.join(map(str, args.paths))}")
    text = table([row(r) for r in runs])
    print(text)
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")
    return text


if __name__ == "__main__":
    cli(main)
