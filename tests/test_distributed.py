"""torchrun on the CPU: two gloo processes launched by the test itself.

The same config on 2 processes trains the same vectors as on 1 (each rank runs half of every optimizer
batch's micro-batches and the gradients are summed: equal up to the order of the sums), its probe gives the
same bases (the probe batches divided, the gradients summed, the SVDs divided among the ranks), a kill -9 of
one rank then --resume reaches the uninterrupted 2-process run's vectors exactly, and eval.py's predictions
on 2 processes are those of 1."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from data.safetensors_io import load_safetensors
from data.synthetic_math import write_gsm8k_jsonl
from tiny_run import REPO, TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no torch.distributed gloo backend")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU on every machine
METHODS = {"giva": {}, "lora": {"adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8.0}}


def torchrun(script: str, *args, nproc: int = 2, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--", str(REPO / script), *map(str, args)]  # "--": torchrun would take e.g. --run for its --run-path
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tensors(run, name):
    return load_safetensors(run / name)[0]


def assert_close(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny checkpoint and data, written once by a one-process run (train.main writes them on first use)."""
    tmp = tmp_path_factory.mktemp("data")
    train.main([TINY_CONFIG, *tiny_overrides(tmp, {"train.max_steps": 1, "train.name": "warm"})])
    return tmp


def sets(data, out, extra=None):
    extra = {"model.path": data / "ckpt", "train.out_dir": out, "train.device": "cpu", **(extra or {})}
    return tiny_overrides(data, extra)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_the_vectors_of_one(data, tmp_path, method):
    one, two = tmp_path / "one", tmp_path / "two"
    train.main([TINY_CONFIG, *sets(data, one, METHODS[method])])
    torchrun("train.py", TINY_CONFIG, *sets(data, two, METHODS[method]))
    run1, run2 = one / "tiny_math", two / "tiny_math"
    # the bases (GiVA's from the probe's gradient summed over the ranks) and the initial tensors
    assert_close(tensors(run2, "adapter.safetensors"), tensors(run1, "adapter.safetensors"), rtol=1e-4, atol=1e-5)
    assert_close(tensors(run2, "last.safetensors"), tensors(run1, "last.safetensors"), rtol=1e-4, atol=1e-5)
    last, initial = tensors(run1, "last.safetensors"), tensors(run1, "adapter.safetensors")
    assert any(not torch.equal(last[k], initial[k]) for k in last)  # training moved them
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (run1, run2))
    assert s2["steps"] == s1["steps"] and s2["train_tokens"] == s1["train_tokens"]  # every rank's tokens counted
    assert s2["best_val_loss"] == pytest.approx(s1["best_val_loss"], rel=1e-5)
    assert sorted(p.name for p in run2.iterdir()) == sorted(p.name for p in run1.iterdir())


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_uninterrupted_vectors(data, tmp_path):
    extra = {"adapter.dropout": 0.1, "train.epochs": 12, "train.val_per_epoch": 1}  # every rank's RNG resumed
    torchrun("train.py", TINY_CONFIG, *sets(data, tmp_path / "whole", extra))
    run = tmp_path / "killed" / "tiny_math"
    proc = torchrun("train.py", TINY_CONFIG, *sets(data, tmp_path / "killed", extra), wait=False)
    try:
        deadline = time.time() + 300
        while not (run / "state.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)  # one rank, right after the first checkpoint
    finally:
        proc.wait()
    assert proc.returncode != 0, "the run finished before a rank could be killed"
    assert torch.load(run / "state.pt", weights_only=True)["step"] < 72
    torchrun("train.py", TINY_CONFIG, *sets(data, tmp_path / "killed", extra), "--resume")
    whole = tmp_path / "whole" / "tiny_math"
    for name in ("last.safetensors", "best.safetensors"):
        a, b = tensors(run, name), tensors(whole, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resuming_with_another_number_of_processes_is_refused(data, tmp_path, capsys):
    over = sets(data, tmp_path, {"train.max_steps_this_invocation": 2})
    torchrun("train.py", TINY_CONFIG, *over)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), TINY_CONFIG, *over, "--resume"], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "written by a run of 2 process(es)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_on_two_processes_writes_the_predictions_of_one(data, tmp_path):
    write_gsm8k_jsonl(tmp_path / "g.jsonl", 7)
    args = ["--task", "gsm8k", "--model", data / "ckpt", "--data", tmp_path / "g.jsonl", "--batch-size", "2",
            "--max-new-tokens", "12"]
    subprocess.run([sys.executable, str(REPO / "eval.py"), *args, "--out", tmp_path / "one.jsonl"], cwd=REPO,
                   env=ENV, check=True, capture_output=True, timeout=300)
    torchrun("eval.py", *args, "--out", tmp_path / "two.jsonl")
    one, two = ((tmp_path / f).read_text().splitlines() for f in ("one.jsonl", "two.jsonl"))
    assert len(one) == 7 and one == two


def _rank_pid(agent: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (its RANK in the environment), waited for while it starts."""
    for _ in range(1000):
        for child in open(f"/proc/{agent}/task/{agent}/children").read().split():
            try:
                env = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
            except FileNotFoundError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
        time.sleep(0.01)
    raise AssertionError(f"torchrun {agent} has no worker of rank {rank}")
