"""torchrun on the CPU: two gloo processes launched by the test itself.

The same config on 2 processes trains the same vectors as on 1 (each rank runs half of every optimizer
batch's micro-batches and the gradients are summed: equal up to the order of the sums), its probe gives the
same bases (the probe batches divided, the gradients summed, the SVDs divided among the ranks), a kill -9 of
one rank then --resume reaches the uninterrupted 2-process run's vectors exactly, and eval.py's predictions
on 2 processes are those of 1. All of it both data parallel (train.parallel=ddp) and with the model sharded
by FSDP2 (fsdp; full fine-tuning too), there with 3 micro-batches per step so that a rank runs a filler."""
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
METHODS = {"giva": {}, "lora": {"adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8.0},
           "full": {"adapter.method": "full", "train.lr": 1e-3}}
PARALLEL = {"ddp": {}, "fsdp": {"train.parallel": "fsdp", "train.batch_size": 12, "data.n_val": 12}}


def torchrun(script: str, *args, nproc: int = 2, wait: bool = True, env: dict = ENV):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--", str(REPO / script), *map(str, args)]  # "--": torchrun would take e.g. --run for its --run-path
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
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
@pytest.mark.parametrize("method,parallel", [("giva", "ddp"), ("lora", "ddp"), ("giva", "fsdp"), ("lora", "fsdp"),
                                             ("full", "fsdp"), ("giva", "fsdp+compile")])
def test_two_processes_train_the_vectors_of_one(data, tmp_path, method, parallel):
    one, two = tmp_path / "one", tmp_path / "two"
    parallel, compiled = parallel.split("+")[0], "+compile" in parallel  # compiled blocks inside FSDP's units
    config = {**METHODS[method], **PARALLEL[parallel], "train.compile": compiled}
    train.main([TINY_CONFIG, *sets(data, one, config)])  # one process: train.parallel changes nothing
    proc = torchrun("train.py", TINY_CONFIG, *sets(data, two, config))
    assert ("FSDP: sharded over 2 process(es)" in proc.stdout) == (parallel == "fsdp")
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP2's CUDA path (NCCL) needs a CUDA device")
def test_fsdp_on_one_gpu_trains_the_vectors_of_a_plain_run(data, tmp_path):
    """FSDP2 on CUDA through NCCL, in a torchrun group of one: the model loaded on the CPU, sharded onto the GPU,
    bf16 weights under autocast, the probe's sharded gradients. The same vectors as one plain process, within
    bf16's rounding of the activations (the two runs differ only in how the weights reach the kernels)."""
    config = {"train.device": "cuda", "model.dtype": "bfloat16"}
    train.main([TINY_CONFIG, *sets(data, tmp_path / "one", config)])
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = torchrun("train.py", TINY_CONFIG, *sets(data, tmp_path / "fsdp", {**config, "train.parallel": "fsdp"}),
                    nproc=1, env=env)
    assert "FSDP: sharded over 1 process(es)" in proc.stdout
    for name in ("adapter.safetensors", "last.safetensors"):
        assert_close(tensors(tmp_path / "fsdp" / "tiny_math", name), tensors(tmp_path / "one" / "tiny_math", name),
                     rtol=2e-2, atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", list(PARALLEL))
def test_a_killed_rank_resumes_to_the_uninterrupted_vectors(data, tmp_path, parallel):
    extra = {"adapter.dropout": 0.1, "train.epochs": 12, "train.val_per_epoch": 1,  # every rank's RNG resumed
             **PARALLEL[parallel]}
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
    steps = json.loads((tmp_path / "whole" / "tiny_math" / "summary.json").read_text())["steps"]
    assert torch.load(run / "state.pt", weights_only=True)["step"] < steps
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
