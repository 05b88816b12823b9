"""configs/commonsense/tiny.yaml end to end on the CPU: train.py on the real BoolQ training records (a file
in commonsense_15k.json's format), then `eval.py --task commonsense --tasks boolq,piqa --limit 8` on the
real test sets, beam 4 and 32 new tokens from the config's eval section."""
import json

import eval as eval_script
import train
from data.commonsense import extract_answer, read_test_set
from experiment import load_experiment
from tests.conftest import REPO

TINY = REPO / "configs/commonsense/tiny.yaml"


def test_tiny_commonsense_trains_and_scores(tmp_path, shared_data):
    data = shared_data / "commonsense"
    sets = [a for k, v in {"model.path": tmp_path / "ckpt", "data.path": data / "boolq/train.json",
                           "train.out_dir": tmp_path / "runs", "eval.path": data}.items()
            for a in ("--set", f"{k}={v}")]
    summary = train.main([str(TINY), *sets])
    run = tmp_path / "runs/tiny_commonsense"
    exp = load_experiment(run / "config.yaml")
    assert (exp.data.task, exp.eval.task) == ("commonsense", "commonsense")
    assert (exp.eval.num_beams, exp.eval.max_new_tokens) == (4, 32)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len([r for r in lines if "val_loss" in r]) == 4  # 2 validations an epoch, 2 epochs
    assert losses[-1] < losses[0] and summary["best_val_loss"] > 0

    metrics = eval_script.main(["--task", "commonsense", "--run", str(run), "--tasks", "boolq,piqa", "--limit", "8"])
    records = [json.loads(line) for line in (run / "commonsense_best_predictions.jsonl").read_text().splitlines()]
    assert [(r["task"], r["index"]) for r in records] == [(t, i) for t in ("boolq", "piqa") for i in range(8)]
    for name in ("boolq", "piqa"):
        gold = [r.answer for r in read_test_set(data, name)[:8]]
        rows = [r for r in records if r["task"] == name]
        assert [r["answer"] for r in rows] == gold
        assert all(r["prediction"] == extract_answer(name, r["generation"]) for r in rows)
        assert all(r["correct"] == (r["prediction"] == r["answer"]) for r in rows)
        assert metrics["tasks"][name] == {"accuracy": sum(r["correct"] for r in rows) / 8,
                                          "correct": sum(r["correct"] for r in rows), "total": 8}
    assert set(metrics["tasks"]) == {"boolq", "piqa"}
    assert metrics["average"] == (metrics["tasks"]["boolq"]["accuracy"] + metrics["tasks"]["piqa"]["accuracy"]) / 2
    assert (metrics["num_beams"], metrics["max_new_tokens"]) == (4, 32)
    saved = json.loads((run / "commonsense_best_predictions.jsonl.metrics.json").read_text())
    assert saved["tasks"] == metrics["tasks"]
