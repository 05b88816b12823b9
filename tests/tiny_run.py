"""Overrides that point configs/tiny_math.yaml at a temporary folder and shrink it for the test budget."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = str(REPO / "configs/tiny_math.yaml")


def tiny_overrides(tmp: Path, extra: dict | None = None) -> list[str]:
    values = {"model.path": tmp / "ckpt", "data.path": tmp / "metamath.json", "data.cache_dir": tmp / "cache",
              "eval.path": tmp / "gsm8k.jsonl", "train.out_dir": tmp / "runs", "data.n_train": 48,
              "data.n_val": 8, "data.max_tokens": 160, "train.batch_size": 8, "train.micro_batch_size": 4,
              "train.epochs": 2, "train.log_every": 2, **(extra or {})}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
