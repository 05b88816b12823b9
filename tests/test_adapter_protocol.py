"""The adapter protocol as train.py uses it: the probe runs only for a method that needs the gradient, and a
module trained fully (a GLUE head under full fine-tuning) takes exactly one AdamW update per step."""
import json

import pytest
import torch
import yaml

import giva
import train
from data import load_tokenizer
from data.safetensors_io import load_safetensors, save_safetensors
from data.tasks import TASKS
from experiment import load_experiment
from models import Encoder, load_config, load_model
from models.checkpoint import FAMILIES, inverse_key
from tiny_run import TINY_CONFIG, tiny_overrides


@pytest.mark.parametrize("method", ["lora", "vera", "osora", "randlora", "full"])
def test_methods_without_a_gradient_run_no_probe(method, tmp_path, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError(f"{method} ran the probe")

    monkeypatch.setattr(giva, "estimate_gradients", no_probe)
    sets = tiny_overrides(tmp_path, {"adapter.method": method, "adapter.alpha": 8.0, "adapter.r": 4,
                                     "train.max_steps": 1, "data.n_train": 8, "train.epochs": 1})
    summary = train.main([TINY_CONFIG, *sets])
    run = tmp_path / "runs/tiny_math"
    assert summary["steps"] == 1 and not (run / "probe.json").exists()
    assert (run / "adapter.safetensors").is_file() and (run / "last.safetensors").is_file()


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "a", "very", "not", "plot"]
SENTENCES = ["a good film", "a bad film", "not a good plot", "a very bad plot", "very good", "not bad"]


def _tiny_bert_glue(tmp_path):
    """A tiny random BERT checkpoint (no dropout, so one step can be recomputed exactly) and an SST-2 file."""
    ckpt = tmp_path / "bert"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(dict(
        model_type="bert", vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, type_vocab_size=2, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    (ckpt / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    body = Encoder(load_config(ckpt))  # no head: the run's head is fresh, sized by the task
    save_safetensors(ckpt / "model.safetensors", {"bert." + inverse_key(n, FAMILIES["bert"].keys): t
                                                  for n, t in body.state_dict().items()})
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = "".join(f"{s}\t{int('good' in s and 'not' not in s)}\n" for s in SENTENCES)
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return ckpt


def test_full_fine_tuning_steps_the_head_once_per_step(tmp_path):
    """adapter.method=full on a GLUE config with modules_to_save: [classifier]: after one optimizer step the
    head equals one hand-written AdamW update from its initial value (two updates, the old bug, land ~2x away)."""
    ckpt = _tiny_bert_glue(tmp_path)
    lr, wd, eps = 1e-2, 0.01, 1e-8  # eps: train.eps's default; AdamW's first step does not depend on the betas
    config = {"model": {"path": str(ckpt), "dtype": "float32"},
              "data": {"task": "glue_sst2", "path": str(tmp_path / "glue"), "max_tokens": 16},
              "adapter": {"method": "full", "targets": ["query", "value"], "modules_to_save": ["classifier"]},
              "train": {"name": "full", "out_dir": str(tmp_path / "runs"), "device": "cpu", "epochs": 1,
                        "batch_size": len(SENTENCES), "micro_batch_size": len(SENTENCES), "lr": lr,
                        "weight_decay": wd, "grad_clip": 0.0, "schedule": "constant", "max_steps": 1,
                        "val_per_epoch": 1}}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(config))
    train.main([str(tmp_path / "full.yaml")])
    run = tmp_path / "runs/full"
    initial, _ = load_safetensors(run / "adapter.safetensors")
    trained, _ = load_safetensors(run / "last.safetensors")
    assert {"classifier.weight", "classifier.bias"} <= set(trained)

    # The step's gradient, recomputed from the initial tensors on the same batch (token-normalised loss).
    exp = load_experiment(tmp_path / "full.yaml")
    task = TASKS["glue_sst2"](exp, load_tokenizer(ckpt), ckpt)
    model = load_model(ckpt, num_labels=task.num_labels)
    giva.load_adapter(model, run / "adapter.safetensors")
    model.train()
    order = train.by_length(task, task.train, range(len(task.train)))
    loss_sum, n = model.loss(task.collate([task.train[i] for i in order]))
    (loss_sum / n).backward()
    for name in ("classifier.weight", "classifier.bias"):
        p0, g = initial[name], model.get_parameter(name).grad
        # AdamW's first step: m_hat = g, v_hat = g^2, decoupled weight decay
        expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(trained[name], expected, rtol=1e-5, atol=1e-6)
        assert (trained[name] - p0).abs().max() > 0.5 * lr  # it did move by about lr
