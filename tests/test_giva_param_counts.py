"""T6: the trainable-parameter counts of methods.md 7.4 (the paper's tables), reproduced on the meta device.

The models are our Decoder built from the publishers' config.json values (tests/model_configs/), so the
counts come from real module shapes with no weights. Expected values are the paper's, as methods.md 7.4
lists them: percentages are trainable / (base + adapter) to the paper's 3 decimals, absolute counts to
the paper's precision in millions.
"""
import shutil

import pytest
import torch

from giva import AdapterConfig, apply_adapters, count_parameters
from models import Decoder, load_config

CONFIGS = __import__("pathlib").Path(__file__).parent / "model_configs"
QKVUD = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
ALL7 = QKVUD + ["o_proj", "gate_proj"]


def meta_decoder(name, tmp_path):
    shutil.copy(CONFIGS / f"{name}.json", tmp_path / "config.json")
    with torch.device("meta"):
        return Decoder(load_config(tmp_path))


@pytest.mark.parametrize("name, total", [("qwen2-0.5b", 494_032_768), ("phi-3-mini-4k-instruct", 3_821_079_552),
                                         ("olmo-2-1124-7b", 7_298_617_344), ("mistral-7b-v0.1", 7_241_732_096)])
def test_base_parameter_totals(name, total, tmp_path):
    """The transcribed configs give the publishers' parameter counts (methods.md 7.4)."""
    assert sum(p.numel() for p in meta_decoder(name, tmp_path).parameters()) == total


def adapted_count(model, method, r, targets):
    apply_adapters(model, AdapterConfig(method=method, r=r, targets=targets, alpha=1.0, init="topsv"))
    return count_parameters(model)


PERCENT = [  # (model, targets, method, r, the paper's %)
    ("qwen2-0.5b", QKVUD, "lora", 16, "1.180"), ("qwen2-0.5b", QKVUD, "vera", 1024, "0.058"),
    ("qwen2-0.5b", QKVUD, "osora", 1024, "0.048"), ("qwen2-0.5b", QKVUD, "randlora", 10, "1.191"),
    ("qwen2-0.5b", QKVUD, "giva", 64, "0.035"),
    ("olmo-2-1124-7b", QKVUD, "lora", 16, "0.383"), ("olmo-2-1124-7b", QKVUD, "vera", 1024, "0.014"),
    ("olmo-2-1124-7b", QKVUD, "osora", 1024, "0.014"), ("olmo-2-1124-7b", QKVUD, "randlora", 100, "0.376"),
    ("olmo-2-1124-7b", QKVUD, "giva", 64, "0.012"),
]


@pytest.mark.parametrize("name, targets, method, r, paper", PERCENT)
def test_percent_of_model(name, targets, method, r, paper, tmp_path):
    c = adapted_count(meta_decoder(name, tmp_path), method, r, targets)
    assert f"{100 * c['trainable'] / c['total']:.3f}" == paper


MILLIONS = [  # (model, targets, method, r, the paper's count in millions, its decimals)
    ("olmo-2-1124-7b", QKVUD, "lora", 8, 14.02, 2), ("olmo-2-1124-7b", QKVUD, "vera", 512, 0.96, 2),
    ("olmo-2-1124-7b", QKVUD, "osora", 512, 0.96, 2), ("olmo-2-1124-7b", QKVUD, "giva", 64, 0.89, 2),
    ("mistral-7b-v0.1", ALL7, "lora", 64, 167.8, 1), ("mistral-7b-v0.1", ALL7, "vera", 1024, 1.6, 1),
    ("mistral-7b-v0.1", ALL7, "giva", 32, 1.4, 1),
]


@pytest.mark.parametrize("name, targets, method, r, paper, decimals", MILLIONS)
def test_absolute_count(name, targets, method, r, paper, decimals, tmp_path):
    c = adapted_count(meta_decoder(name, tmp_path), method, r, targets)
    assert round(c["trainable"] / 1e6, decimals) == paper


def test_design_doc_exact_counts(tmp_path):
    """design.md: OLMo-2-7B, q,k,v,up,down: GiVA r=64 trains 886,784 scalars, VeRA r=512 958,464."""
    assert adapted_count(meta_decoder("olmo-2-1124-7b", tmp_path), "giva", 64, QKVUD)["trainable"] == 886_784
    assert adapted_count(meta_decoder("olmo-2-1124-7b", tmp_path), "vera", 512, QKVUD)["trainable"] == 958_464


PHI3_TARGETS = ["qkv_proj", "gate_up_proj", "down_proj"]  # the paper's Phi-3 targets (methods.md 7.3, 9.23)


@pytest.mark.parametrize("method, r, paper", [("lora", 16, "0.573"), ("vera", 1024, "0.027"),
                                              ("osora", 1024, "0.027"), ("randlora", 40, "0.598"),
                                              ("giva", 64, "0.024")])
def test_phi3_fused_percent(method, r, paper, tmp_path):
    """Our Decoder keeps Phi-3's fused qkv_proj and gate_up_proj as one matrix each, as the checkpoint has
    them: plain adapters over the fused matrices give the paper's Phi-3 budgets."""
    model = meta_decoder("phi-3-mini-4k-instruct", tmp_path)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.qkv_proj.out_features == 9216 and mlp.gate_up_proj.out_features == 16384
    c = adapted_count(model, method, r, PHI3_TARGETS)
    assert f"{100 * c['trainable'] / c['total']:.3f}" == paper


def test_phi3_dry_run_through_train_py(tmp_path, capsys):
    """`train.py --dry-run` on the real Phi-3-mini config.json with the paper's fused targets."""
    import json
    import train
    shutil.copy(CONFIGS / "phi-3-mini-4k-instruct.json", tmp_path / "config.json")
    sets = ["--set", f"model.path={tmp_path}", "--set", "adapter.targets=[qkv_proj, gate_up_proj, down_proj]"]
    train.main([str(CONFIGS.parent.parent / "configs/olmo2_metamath.yaml"), *sets, "--dry-run"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"{last['trainable_percent']:.3f}" == "0.024"
