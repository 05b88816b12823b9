"""train.py and eval.py: an error about the user's input is one line `error: ...` naming the file or key and a
non-zero exit, never a traceback (GIVA_TRACEBACK=1 shows one)."""
import os
import subprocess
import sys

from models import write_random_checkpoint
from tiny_run import REPO, TINY_CONFIG


def _run(script, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def _one_line(proc, *words):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_config_value(tmp_path):
    _one_line(_run("train.py", TINY_CONFIG, "--set", "train.lr=.nan", "--set", f"train.out_dir={tmp_path}"),
              "'train.lr'", "finite number > 0")


def test_bad_data_file(tmp_path):
    (tmp_path / "g.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    ckpt = tmp_path / "ckpt"
    write_random_checkpoint(ckpt, family="llama", seed=0)
    _one_line(_run("eval.py", "--task", "gsm8k", "--model", str(ckpt), "--data", str(tmp_path / "g.jsonl"),
                   "--out", str(tmp_path / "p.jsonl")), "g.jsonl, line 1", "malformed GSM8K record")


def test_bad_checkpoint_file(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "ckpt", family="llama", seed=0)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])  # cut off
    proc = _run("eval.py", "--task", "gsm8k", "--model", str(ckpt), "--out", str(tmp_path / "p.jsonl"))
    _one_line(proc, "model.safetensors")
    traced = _run("eval.py", "--task", "gsm8k", "--model", str(ckpt), "--out", str(tmp_path / "p.jsonl"),
                  env={"GIVA_TRACEBACK": "1"})
    assert traced.returncode != 0 and "Traceback" in traced.stderr
