"""A shortened demo: the real all-MiniLM-L6-v2 + GiVA on the generated sentiment data, end to end."""
from conftest import REPO
from data.safetensors_io import SafetensorsFile, load_safetensors
import eval as eval_py
import train


def test_shortened_demo_runs_end_to_end(minilm_dir, tmp_path):
    """The README's demo command (configs/demo.yaml through train.py), on fewer examples and one epoch."""
    summary = train.main([str(REPO / "configs" / "demo.yaml"), "--set", "data.n_train=64", "--set", "data.n_val=32",
                          "--set", "train.epochs=1", "--set", f"train.out_dir={tmp_path}"])
    assert 0.0 <= summary["val_accuracy_before"] <= 1.0 and 0.0 <= summary["val_accuracy_after"] <= 1.0
    assert summary["steps"] == 2
    # GiVA r=8 on query, key, value, dense of MiniLM (dim 384, FFN 1536, 6 layers) plus pooler.dense:
    # lambda_o (out) + lambda_s (8) per matrix (the fully trained head is not counted, as in the paper)
    per_layer = 4 * (384 + 8) + (1536 + 8) + (384 + 8)
    assert summary["trainable_params"] == 6 * per_layer + (384 + 8)
    # `python eval.py --run DIR` reproduces the run's final validation accuracy from the saved files alone
    assert eval_py.main(["--run", str(tmp_path / "demo"), "--checkpoint", "last"])["val_accuracy"] == \
        summary["val_accuracy_after"]


def test_only_adapter_vectors_and_head_are_trained(minilm_dir, tmp_path):
    """The run's trained-tensor files hold the GiVA vectors and the fully trained head and nothing else; every
    lambda_o moved away from its 0 init, and the frozen bases are stored once, in adapter.safetensors."""
    # two targets keep the probe's SVDs (the slow part on a CPU) few; the demo test covers all four
    train.main([str(REPO / "configs" / "demo.yaml"), "--set", "data.n_train=64", "--set", "data.n_val=16",
                "--set", "train.epochs=1", "--set", "adapter.targets=[query, value]",
                "--set", f"train.out_dir={tmp_path}"])
    trained, _ = load_safetensors(tmp_path / "demo" / "last.safetensors")
    head = {k for k in trained if k.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    assert all(k.rsplit(".", 1)[-1] in ("giva_lambda_o", "giva_lambda_s") for k in set(trained) - head)
    lambdas = [v for k, v in trained.items() if k.endswith("giva_lambda_o")]
    assert len(lambdas) == 12 and all(v.abs().sum() > 0 for v in lambdas)  # 6 layers x 2 targets, all trained
    bases = SafetensorsFile(tmp_path / "demo" / "adapter.safetensors").keys()
    assert sum(k.endswith(("giva_A", "giva_B")) for k in bases) == 24
