"""A shortened demo: the real all-MiniLM-L6-v2 + GiVA on the generated sentiment data, end to end."""
import torch

from bench.encoder_finetune import finetune
from data.classification import ClassificationTask
from data.demo_data import demo_splits
from data.wordpiece_tokenizer import WordPieceTokenizer
from encoder_helpers import REPO, minilm_dir  # noqa: F401 (fixture)
from giva import AdapterConfig
from models import load_model
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


def test_only_adapter_vectors_and_head_change(minilm_dir):
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    train, val = demo_splits(32, 16, seed=1)
    task = ClassificationTask(train, val, tok, 2, "accuracy")
    model = load_model(minilm_dir, num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # two targets keep the probe's SVDs (the slow part on a CPU) few; the demo test covers all four
    finetune(model, task, AdapterConfig(method="giva", r=8, targets=["query", "value"]),
             epochs=1, batch_size=16, lr=1e-2, log=lambda *_: None)
    after = model.state_dict()
    changed = {k for k in after if k in before and not torch.equal(after[k], before[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # every base weight is bitwise unchanged
    lambdas = [v for k, v in after.items() if k.endswith("giva_lambda_o")]
    assert len(lambdas) == 12 and all(v.abs().sum() > 0 for v in lambdas)  # 6 layers x 2 targets, all trained
