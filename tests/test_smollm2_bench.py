"""bench/smollm2_gsm8k.py --smoke runs end to end on a CPU (a tiny random Llama in place of SmolLM2): the lr
choice on the validation split, train.py and both eval.py calls, the table with one row per method."""
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_smollm2_gsm8k_sweep_smoke(shared_data, tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "smollm2_gsm8k.py"), "--smoke", "--device", "cpu",
                           "--out", str(out), "--set", f"data.path={shared_data / 'gsm8k' / 'train.jsonl'}",
                           "--set", f"eval.path={shared_data / 'gsm8k' / 'test.jsonl'}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["untrained", "giva_secsv_r16", "lora_r8"]
    assert out.with_suffix(".jsonl").is_file() and "python train.py configs/smollm2_gsm8k.yaml" in out.read_text()
