"""A run interrupted mid-way, by its own step limit or by SIGKILL, and resumed with --resume reaches
bitwise the same trained vectors, best checkpoint and metrics as an uninterrupted run (CPU, fp32)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from experiment import ConfigError
from data.safetensors_io import load_safetensors
from tiny_run import REPO, TINY_CONFIG, tiny_overrides

# dropout draws from the global RNG, so its state must be resumed too; the bitwise claim is the CPU's (on a GPU
# the kernels' reduction order may differ between processes), so the runs stay on the CPU on every machine
DROPOUT = {"adapter.dropout": 0.1, "train.device": "cpu"}


def _outputs(run):
    last, _ = load_safetensors(run / "last.safetensors")
    best, _ = load_safetensors(run / "best.safetensors")
    metrics = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "gpu_mem_gib")}  # measurements, not state
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return last, best, metrics, summary["best_val_loss"], summary["best_step"]


def _assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert a[2:] == b[2:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    train.main([TINY_CONFIG, *tiny_overrides(tmp, DROPOUT)])
    return tmp, _outputs(tmp / "runs/tiny_math")


def test_stopped_twice_and_resumed_matches_bitwise(tmp_path, uninterrupted):
    data_from, whole = uninterrupted
    sets = tiny_overrides(tmp_path, {**DROPOUT, "model.path": data_from / "ckpt"})
    assert train.main([TINY_CONFIG, *sets, "--set", "train.max_steps_this_invocation=4"])["step"] == 4
    with pytest.raises(FileExistsError, match="pass --resume"):
        train.main([TINY_CONFIG, *sets])
    with pytest.raises(ConfigError, match="differs from this config at train.lr"):
        train.main([TINY_CONFIG, *sets, "--set", "train.lr=0.5", "--resume"])
    assert train.main([TINY_CONFIG, *sets, "--set", "train.max_steps_this_invocation=5", "--resume"])["step"] == 9
    train.main([TINY_CONFIG, *sets, "--resume"])
    _assert_same(_outputs(tmp_path / "runs/tiny_math"), whole)


def test_killed_process_resumes_to_the_same_vectors(tmp_path, uninterrupted):
    data_from, whole = uninterrupted
    sets = tiny_overrides(tmp_path, {**DROPOUT, "model.path": data_from / "ckpt"})
    state = tmp_path / "runs/tiny_math/state.pt"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), TINY_CONFIG, *sets], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # right after the first checkpoint, mid-run
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert torch.load(state, weights_only=True)["step"] < 12
    orphan = tmp_path / "runs/tiny_math/.state.pt.k1ll3d.tmp"  # what a kill inside an atomic write leaves
    orphan.write_bytes(b"half a state")
    train.main([TINY_CONFIG, *sets, "--resume"])
    _assert_same(_outputs(tmp_path / "runs/tiny_math"), whole)
    assert not list((tmp_path / "runs/tiny_math").glob(".*.tmp"))  # removed under the run's lock


def test_a_second_train_py_on_a_run_directory_is_refused(tmp_path, uninterrupted):
    """Two train.py on one run directory: the second (fresh or --resume) exits non-zero with one line while
    the first holds the lock, and the first finishes untouched (its metrics one run's, step by step)."""
    data_from, _ = uninterrupted
    sets = tiny_overrides(tmp_path, {**DROPOUT, "model.path": data_from / "ckpt", "train.epochs": 60})
    # stderr to a file, not a pipe: nobody reads it while the run goes on, and a full pipe would block its bar
    first_err = open(tmp_path / "first.err", "w")
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), TINY_CONFIG, *sets], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=first_err, text=True)
    state = tmp_path / "runs/tiny_math/state.pt"  # the run is under way, and --resume would have a state
    deadline = time.time() + 120
    while not state.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    seconds = [subprocess.Popen([sys.executable, str(REPO / "train.py"), TINY_CONFIG, *sets, *extra], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for extra in ([], ["--resume"])]
    errors = [(p.wait(), p.stderr.read()) for p in seconds]
    assert first.poll() is None, "the first run ended before the second ones were refused: make it longer"
    assert first.wait() == 0, (tmp_path / "first.err").read_text()[-3000:]
    first_err.close()
    for code, err in errors:
        assert code != 0 and "in use by another train.py" in err and err.strip().count("\n") == 0, err
    records = [json.loads(line) for line in (tmp_path / "runs/tiny_math/metrics.jsonl").read_text().splitlines()]
    for kind in ("val_loss", "loss"):  # one run's lines, none repeated or interleaved
        steps = [r["step"] for r in records if kind in r and (kind == "val_loss") == ("val_loss" in r)]
        assert steps and steps == sorted(set(steps)), (kind, steps)
    assert json.loads((tmp_path / "runs/tiny_math/summary.json").read_text())["steps"] == 60 * 6
