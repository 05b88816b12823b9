"""configs/commonsense/*.yaml: every method row of the paper's Table 2, as its `--set` comment line states it,
dry-run through train.py on the model's real config.json (tests/model_configs/), gives the paper's trainable
share (methods.md 7.4); and each file holds the paper's commonsense setting (methods.md 7.2-7.3, 8).

The budgets themselves are tested method by method in test_giva_param_counts.py; here it is the configs and
their comment lines that are checked, so a row copied with a wrong rank or target fails.
"""
import json
import re
import shutil

import pytest

import train
from experiment import load_experiment
from tests.conftest import REPO

CONFIGS = REPO / "configs" / "commonsense"
MODEL_CONFIGS = REPO / "tests" / "model_configs"
ROWS = ["GiVA TopSV-B r=64", "GiVA SecSV-B r=64", "GiVA Rand-B r=64", "VeRA r=1024", "OSoRA r=1024", "RandLoRA",
        "LoRA r=16"]
# config -> (its model's config.json, Table 2's percentages: GiVA (all three B), VeRA, OSoRA, RandLoRA r, LoRA)
PAPER = {
    "qwen2_05b": ("qwen2-0.5b", "0.035", "0.058", "0.048", (10, "1.191"), "1.180"),
    "phi3_mini": ("phi-3-mini-4k-instruct", "0.024", "0.027", "0.027", (40, "0.598"), "0.573"),
    "olmo2_7b": ("olmo-2-1124-7b", "0.012", "0.014", "0.014", (100, "0.376"), "0.383"),
}
_ROW = re.compile(r"^#\s+(?P<label>(?:GiVA|VeRA|OSoRA|RandLoRA|LoRA)[^(]*?) \((?P<percent>[\d.]+)%\):\s+(?P<rest>.*)$")


def comment_rows(path) -> dict[str, tuple[str, list[str]]]:
    """{row label (RandLoRA without its rank): (the percentage it states, its --set overrides, the full label)}
    from a config's comment lines."""
    rows = {}
    for line in path.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            label = "RandLoRA" if m["label"].startswith("RandLoRA") else m["label"]
            rows[label] = (m["percent"], re.findall(r"--set (\S+)", m["rest"]), m["label"])
    return rows


def expected(name) -> dict[str, str]:
    _, giva, vera, osora, (_, randlora), lora = PAPER[name]
    return dict(zip(ROWS, [giva, giva, giva, vera, osora, randlora, lora]))


@pytest.mark.parametrize("name", list(PAPER))
def test_every_table2_row_dry_runs_to_the_papers_share(name, tmp_path, capsys):
    shutil.copy(MODEL_CONFIGS / f"{PAPER[name][0]}.json", tmp_path / "config.json")
    rows = comment_rows(CONFIGS / f"{name}.yaml")
    assert list(rows) == ROWS
    assert rows["RandLoRA"][2] == f"RandLoRA r={PAPER[name][4][0]}"
    names = set()
    for label, (stated, overrides, _) in rows.items():
        assert stated == expected(name)[label], label
        args = [a for o in [*overrides, f"model.path={tmp_path}"] for a in ("--set", o)]
        train.main([str(CONFIGS / f"{name}.yaml"), *args, "--dry-run"])
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert f"{last['trainable_percent']:.3f}" == stated, label
        names.add(load_experiment(CONFIGS / f"{name}.yaml", overrides).train.name)
    assert len(names) == len(ROWS)  # each row writes its own run directory


@pytest.mark.parametrize("name", list(PAPER))
def test_the_papers_commonsense_setting(name):
    exp = load_experiment(CONFIGS / f"{name}.yaml")
    d, a, t, e = exp.data, exp.adapter, exp.train, exp.eval
    assert (d.task, d.n_val, d.shuffle_seed, d.max_tokens) == ("commonsense", 120, 42, 512)
    assert (t.batch_size, t.epochs, t.warmup_steps, t.warmup_ratio, t.schedule) == (16, 3, 100, 0.0, "linear")
    assert (t.val_per_epoch, t.select_by, t.grad_clip, t.weight_decay) == (4, "val_loss", 1.0, 0.0)
    assert (a.method, a.r, a.dropout) == ("giva", 64, 0.05)
    phi3 = ["qkv_proj", "gate_up_proj", "down_proj"]
    assert a.targets == (phi3 if name == "phi3_mini" else ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    assert (e.task, e.num_beams, e.max_new_tokens, e.checkpoint) == ("commonsense", 4, 32, "best")
