"""The GPU benchmarks run end to end in their --smoke mode (tiny shapes, CPU), so the lead's one GPU call
does not fail on a bug a CPU could have caught; and what they report is checked where the CPU can check it:
both sides train the same number of adapter parameters, both probes see the same targets, svd_lowrank
recovers the top subspaces, and our generation from HF's own weights (fp32 on CPU) equals HF `generate`.

The four scripts start together in subprocesses (they spend most of their time importing), and each test
waits for its own.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, shared_data_dir

# bench/common.py, the benchmarks' shared helpers, loaded by path (bench/ is not a package; putting it on
# sys.path would let bench/generate.py shadow other modules named generate)
def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = sys.modules[f"bench_{name}"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = sys.modules["common"] = _load("common")  # the name the scripts import it by

SCRIPTS = {
    # train_step: the Qwen2 shape (GQA, q/k/v bias, tied embeddings); the other two cover OLMo-2
    "train_step": ["--shapes", "qwen2-0.5b"],
    "probe": [],
    "generate": [],
    "vit_step": ["--no-ac"],
    "commonsense_eval": [],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("bench")
    procs = {}
    for name, extra in SCRIPTS.items():
        cmd = [sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke", "--device", "cpu",
               "--out", str(out / f"{name}.json"), *extra]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield {name: (proc, out / f"{name}.json") for name, proc in procs.items()}
    for proc in procs.values():
        proc.kill()


def finished(runs, name) -> dict:
    proc, path = runs[name]
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"bench/{name}.py --smoke failed:\n{log[-4000:]}"
    assert log.rstrip().splitlines()[-1].startswith("| "), f"bench/{name}.py must print its table last:\n{log[-2000:]}"
    return json.loads(path.read_text())


def test_train_step_smoke(runs):
    res = finished(runs, "train_step")["results"]["qwen2-tiny"]
    for key in ("giva_r8", "lora_r4", "vera_r32", "osora_r16", "randlora_r8", "full"):
        rec = res[key]
        assert rec["tokens_per_s"] > 0 and rec["hf"]["tokens_per_s"] > 0, key
        assert "peak_gib" in rec and "peak_gib" in rec["hf"], key
        # both sides compute the same loss: about ln(vocab) for near-uniform logits of random weights (std 0.02)
        for side in (rec, rec["hf"]):
            assert abs(side["loss"] - math.log(256)) < 0.1, (key, side["loss"])
    # peft and we adapt the same layers with the same shapes: identical trainable counts where the method is shared
    for key in ("lora_r4", "vera_r32", "randlora_r8", "full"):
        assert res[key]["trainable"] == res[key]["hf"]["trainable"], key
    # GiVA trains r' + m per layer (methods.md 2.8); SecSV caps r' = min(r, min(m, n) // 2) = 8 on every layer
    # here: q (64, 64), k and v (32, 64), up (128, 64), down (64, 128), two layers
    assert res["giva_r8"]["trainable"] == 2 * sum(8 + m for m in (64, 32, 32, 128, 64))


def test_probe_smoke(runs):
    data = finished(runs, "probe")
    rec = data["results"]["olmo2-tiny"]["probe_svd"]
    assert rec["n_targets"] == rec["hf"]["n_targets"] == 5 * 2
    assert rec["probe_s"] > 0 and rec["svd_s"] > 0 and rec["hf"]["probe_s"] > 0
    for name, acc in data["svd_lowrank_accuracy"].items():
        # q = 4r, 4 power iterations: the top-r subspaces of a 64 x 64 or 128 x 64 gradient are recovered
        assert acc["A"]["projector_dist"] < 0.05 and acc["B_topsv"]["projector_dist"] < 0.05, name
        assert acc["top_r_sigma_rel_err"] < 1e-3, name


def test_generate_smoke(runs):
    res = finished(runs, "generate")["results"]["olmo2-tiny"]
    for key in ("greedy_b4", "beam4_b2"):
        rec = res[key]
        assert rec["new_tokens"] == rec["hf"]["new_tokens"] == int(key.rsplit("_b", 1)[1]) * 8, key
        # same weights (shared tensors), fp32 on CPU: our decoding must equal HF's token for token
        assert rec["agreement"]["identical_rows"] == 1.0, key
        assert 0 < rec["fraction_of_roofline"]["weights_only"] < 1, key


def test_vit_step_smoke(runs):
    results = finished(runs, "vit_step")["results"]
    for shape in ("dinov2-tiny", "clip-tiny"):
        res = results[shape]
        for key in ("giva_r32", "lora_r32", "vera_r256", "randlora_r10", "full"):
            rec = res[key]
            assert rec["images_per_s"] > 0 and rec["hf"]["images_per_s"] > 0, (shape, key)
            for side in (rec, rec["hf"]):  # near-uniform logits of random weights over 100 classes
                assert abs(side["loss"] - math.log(100)) < 0.5, (shape, key, side["loss"])
        # peft and we adapt the same layers (DINOv2's q, k, v included) with the head trained fully
        for key in ("lora_r32", "vera_r256", "randlora_r10"):
            assert res[key]["trainable"] == res[key]["hf"]["trainable"], (shape, key)
    # full: HF's Dinov2Model also holds the mask token (hidden_size 32), which our ViT leaves out
    assert results["dinov2-tiny"]["full"]["hf"]["trainable"] - results["dinov2-tiny"]["full"]["trainable"] == 32
    assert results["clip-tiny"]["full"]["hf"]["trainable"] == results["clip-tiny"]["full"]["trainable"]


def test_commonsense_eval_smoke(runs):
    if not (shared_data_dir() / "commonsense").is_dir():
        pytest.skip(f"{shared_data_dir()}/commonsense is absent: the script scores its real test sets")
    rec = finished(runs, "commonsense_eval")
    # two prompts of each test set there (HellaSwag's is not shipped), beam 4, at most 32 new tokens each
    assert set(rec["tasks"]) >= {"boolq", "piqa", "siqa", "winogrande", "arc_e", "arc_c", "obqa"}
    assert set(rec["tasks"].values()) == {2} and rec["prompts"] == 2 * len(rec["tasks"])
    assert (rec["num_beams"], rec["max_new_tokens"]) == (4, 32)
    assert 0 < rec["generation_s"] <= rec["total_s"] and 0 < rec["new_tokens_per_s"]


@pytest.mark.parametrize("shape", sorted(common.SHAPES))
def test_mfu_parameter_count_matches_decoder(shape, tmp_path):
    """N in the MFU's FLOPs per token (bench/common.py, from config.json fields) is exactly the number of
    weights in our Decoder's nn.Linear layers (projections and lm_head), built on the meta device."""
    import torch
    from models import load_config
    from models.decoder import Decoder

    config = common.SHAPES[shape].config
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = Decoder(load_config(tmp_path))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert common.matmul_params(config) == linear


def test_subspace_distance_extremes():
    """bench/probe.py's measure: 0 for the same subspace in another basis, 90 degrees and 1 for orthogonal
    ones, and the known angle for a plane tilted by theta in one direction."""
    import torch

    probe = _load("probe")
    Q, _ = torch.linalg.qr(torch.randn(20, 6, dtype=torch.float64))  # (20, 6) orthonormal columns
    X, Y = Q[:, :3], Q[:, 3:]
    R, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    angle, dist = probe.subspace_distance(X, X @ R)
    assert angle < 1e-4 and dist < 1e-6
    angle, dist = probe.subspace_distance(X, Y)
    assert abs(angle - 90) < 1e-6 and abs(dist - 1) < 1e-12
    theta = 0.3
    tilted = torch.cat([X[:, :2], math.cos(theta) * X[:, 2:] + math.sin(theta) * Y[:, :1]], dim=1)
    angle, dist = probe.subspace_distance(X, tilted)
    # one principal angle theta, the others 0: ||P - P'||_F^2 = 2 sin^2(theta), over 2r = 6
    assert abs(angle - math.degrees(theta)) < 1e-6 and abs(dist - math.sin(theta) / math.sqrt(3)) < 1e-12
