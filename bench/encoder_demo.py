"""The demo path without train.py: an encoder config (configs/demo.yaml) -> real MiniLM + GiVA -> accuracy.

    python bench/encoder_demo.py configs/demo.yaml [--n-train N] [--epochs E] [--out summary.json]

Reads the YAML's model, data, adapter and train sections directly (only the keys the demo needs), runs
bench/encoder_finetune.py's loop and prints one JSON line with val_accuracy_before / val_accuracy_after,
the keys train.py's summary.json uses.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.encoder_finetune import finetune  # noqa: E402
from data.classification import ClassificationTask, pair_encoder  # noqa: E402
from data.demo_data import demo_splits  # noqa: E402
from data.wordpiece_tokenizer import WordPieceTokenizer  # noqa: E402
from giva import AdapterConfig  # noqa: E402
from models.encoder_families import load_encoder, read_config_json  # noqa: E402
from models.packaged_checkpoint import resolve_checkpoint_path  # noqa: E402


def run_demo(config: dict, n_train: int | None = None, n_val: int | None = None, epochs: int | None = None,
             log=print) -> dict:
    m, d, a, t = config["model"], config["data"], config["adapter"], config["train"]
    torch.manual_seed(t.get("seed", 0))
    path = resolve_checkpoint_path(m["path"])
    model_type = read_config_json(path)[0]["model_type"]
    tok = WordPieceTokenizer.from_dir(path)
    train, val = demo_splits(n_train or d["n_train"], n_val or d["n_val"], d.get("shuffle_seed", 0))
    task = ClassificationTask(train, val, pair_encoder(tok, model_type), tok.pad_id, m.get("num_labels", 2),
                              "accuracy", max_len=d.get("max_tokens", 128))
    model = load_encoder(path, num_labels=m.get("num_labels", 2))
    adapter = AdapterConfig(method=a["method"], r=a["r"], targets=a["targets"], init=a.get("init", "secsv"),
                            dropout=a.get("dropout", 0.0), seed=config.get("probe", {}).get("seed", 0))
    result = finetune(model, task, adapter, epochs=epochs or t["epochs"], batch_size=t["batch_size"], lr=t["lr"],
                      weight_decay=t.get("weight_decay", 0.0), warmup_ratio=t.get("warmup_ratio", 0.0),
                      grad_clip=t.get("grad_clip", 1.0), seed=t.get("seed", 0), log=log)
    return {"val_accuracy_before": result["before"]["accuracy"], "val_accuracy_after": result["after"]["accuracy"],
            "val_accuracy_best": result["best"]["accuracy"], "adapter_params": result["adapter_params"],
            "trainable_params": result["trainable_params"], "steps": result["steps"],
            "wall_s": round(result["wall_s"], 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    summary = run_demo(yaml.safe_load(Path(args.config).read_text()), args.n_train, args.n_val, args.epochs)
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
