"""The hand-written ViT (models/vit.py) against transformers' DINOv2 and CLIP on tiny random checkpoints
saved with save_pretrained, read by the one loader; the paper's image budgets through train.py --dry-run
on the publishers' config.json files; the tiny digits smoke run."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import eval as eval_script
import train
from models import load_model, write_random_checkpoint
from models.vit import ViT

REPO = Path(__file__).resolve().parent.parent
MODEL_CONFIGS = REPO / "tests" / "model_configs"
TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=3, image_size=28,
                   patch_size=7)
TINY_CLIP = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                 patch_size=7)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                 bos_token_id=0, eos_token_id=1, pad_token_id=2)
ATOL = 1e-5  # fp32 over two tiny layers: summation-order rounding only


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers", reason="transformers is the test-only oracle of the ViT parity")


@torch.no_grad()
def _randomize(model, seed=0):
    """Every parameter random (scales 1 + N(0, 0.1), the rest N(0, 0.1)), so that no tensor is trivial and a
    swapped or missed one changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1 + 0.1 * noise if p.ndim == 1 and not name.endswith("bias") else 0.1 * noise)
    return model.eval()


def _save(model, path) -> Path:
    model.save_pretrained(path)
    return Path(path)


def _pixels(h=28, w=28, seed=1):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_dinov2_classifier_matches_transformers(tmp_path, transformers):
    """Dinov2ForImageClassification: the `dinov2.` prefix is stripped, its head loaded; logits and hidden
    states equal, also at an input size whose patch grid differs (interpolated position embeddings)."""
    cfg = transformers.Dinov2Config(**TINY_DINOV2, num_labels=5)
    hf = _randomize(transformers.Dinov2ForImageClassification(cfg))
    ours = load_model(_save(hf, tmp_path / "ckpt"))
    assert ours.classifier.out_features == 5
    for x in (_pixels(), _pixels(42, 35)):  # 4x4 grid, then 6x5 (interpolated)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, atol=ATOL, rtol=0)
            torch.testing.assert_close(ours.forward_hidden(x), hf.dinov2(pixel_values=x).last_hidden_state,
                                       atol=ATOL, rtol=0)


def test_dinov2_backbone_with_a_fresh_head(tmp_path, transformers):
    """A bare Dinov2Model checkpoint + num_labels: the body is the checkpoint's (features equal HF's), the
    head fresh as HF initialises it, and the logits are that head on [CLS; mean patch]."""
    hf = _randomize(transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2)))
    torch.manual_seed(0)
    ours = load_model(_save(hf, tmp_path / "ckpt"), num_labels=300)
    w, b = ours.classifier.weight, ours.classifier.bias
    assert w.shape == (300, 64) and torch.equal(b, torch.zeros(300))
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2  # trunc_normal(0, initializer_range)
    x = _pixels()
    with torch.no_grad():
        hidden = hf(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.pooled(ours.forward_hidden(x)), hf(pixel_values=x).pooler_output,
                                   atol=ATOL, rtol=0)
        expected = torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1) @ w.T + b
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)


def test_clip_classifier_matches_transformers(tmp_path, transformers):
    """CLIPForImageClassification: the vision tower under `vision_model.`, the head on the mean patch token."""
    cfg = transformers.CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_CLIP, projection_dim=8, num_labels=4)
    hf = _randomize(transformers.CLIPForImageClassification(cfg))
    ours = load_model(_save(hf, tmp_path / "ckpt"))
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, atol=ATOL, rtol=0)


def test_clip_model_loads_its_vision_tower(tmp_path, transformers):
    """A whole CLIPModel checkpoint (as openai/clip-vit-* ship): the text tower, projections and logit scale
    are ignored; last hidden state and pooled output equal HF's vision model's; the CLIP head starts as HF's."""
    cfg = transformers.CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_CLIP, projection_dim=8)
    hf = _randomize(transformers.CLIPModel(cfg))
    path = _save(hf, tmp_path / "ckpt")
    ours = load_model(path)
    assert ours.classifier is None
    x = _pixels()
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=x)
        hidden = ours.forward_hidden(x)
        torch.testing.assert_close(hidden, ref.last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.pooled(hidden), ref.pooler_output, atol=ATOL, rtol=0)
    torch.manual_seed(0)
    w = load_model(path, num_labels=500).classifier.weight
    assert abs(w.std().item() - 32 ** -0.5) < 0.01  # normal(0, hidden_size^-0.5 * initializer_factor)
    with pytest.raises(ValueError, match="does not match the CLIP model's 28x28"):
        ours.forward_hidden(_pixels(42, 42))


@pytest.mark.parametrize("family, hf_class", [("dinov2", "Dinov2Model"), ("clip_vision_model", "CLIPVisionModel")])
def test_random_checkpoints_load_in_transformers(tmp_path, transformers, family, hf_class):
    """write_random_checkpoint's ViTs are the publisher layout: transformers reads them to the same network."""
    path = write_random_checkpoint(tmp_path / "ckpt", family=family, image_size=28, patch_size=7)
    ours = load_model(path)
    hf = getattr(transformers, hf_class).from_pretrained(path).eval()
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_hidden(x), hf(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0)
    prep = json.loads((path / "preprocessor_config.json").read_text())
    assert prep["crop_size"] == {"height": 28, "width": 28}


def test_clip_vision_model_saved_by_transformers(tmp_path, transformers):
    """CLIPVisionModel as transformers 5 saves it (no `vision_model.` prefix) loads too."""
    hf = _randomize(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_CLIP)))
    ours = load_model(_save(hf, tmp_path / "ckpt"))
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_hidden(x), hf(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0)


def test_loading_is_strict(tmp_path):
    from data.safetensors_io import load_safetensors, save_safetensors

    path = write_random_checkpoint(tmp_path / "ckpt", family="dinov2")
    tensors = {k: v.clone() for k, v in load_safetensors(path / "model.safetensors")[0].items()}
    del tensors["encoder.layer.1.attention.attention.value.bias"]
    save_safetensors(path / "model.safetensors", tensors)
    with pytest.raises(ValueError, match="missing tensor 'dinov2.encoder.layer.1.attention.attention.value.bias'"):
        load_model(path)
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "use_swiglu_ffn": True}))
    with pytest.raises(ValueError, match="config.json: use_swiglu_ffn=true"):
        load_model(path, device="meta")


def test_module_names_are_the_papers_targets():
    """q, k, v separate linears named as the checkpoints name them (the paper's adapter targets)."""
    dino = load_model(_config_dir("dinov2-base"), device="meta")
    clip = load_model(_config_dir("clip-vit-large-patch14"), device="meta")
    assert isinstance(dino, ViT) and len(dino.encoder.layer) == 12 and len(clip.encoder.layers) == 24
    names = {n.rsplit(".", 1)[-1] for n, m in dino.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"query", "key", "value", "dense", "fc1", "fc2"}
    names = {n.rsplit(".", 1)[-1] for n, m in clip.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


_DIRS = {}


def _config_dir(name) -> Path:
    """A folder holding only tests/model_configs/<name>.json as config.json (dry runs build from it alone)."""
    if name not in _DIRS:
        import tempfile
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        shutil.copy(MODEL_CONFIGS / f"{name}.json", folder / "config.json")
        _DIRS[name] = folder
    return _DIRS[name]


BUDGETS = [  # methods.md 7.4: the paper's Table 5 trainable parameters, in millions, as the paper rounds them
    ("dinov2_base", "dinov2-base", [], "0.076"),
    ("dinov2_base", "dinov2-base", ["adapter.method=vera", "adapter.r=256", "adapter.d_initial=1.0"], "0.089"),
    ("dinov2_base", "dinov2-base", ["adapter.method=randlora", "adapter.r=10", "adapter.alpha=10"], "3.594"),
    ("dinov2_base", "dinov2-base", ["adapter.method=lora", "adapter.r=32", "adapter.alpha=1"], "4.72"),
    ("clip_vit_large", "clip-vit-large-patch14", [], "0.200"),
    ("clip_vit_large", "clip-vit-large-patch14", ["adapter.method=vera", "adapter.r=256"], "0.227"),
    ("clip_vit_large", "clip-vit-large-patch14", ["adapter.method=randlora", "adapter.r=10", "adapter.alpha=10"],
     "12.78"),
    ("clip_vit_large", "clip-vit-large-patch14", ["adapter.method=lora", "adapter.r=32", "adapter.alpha=1"], "12.58"),
]
BASE_PARAMS = {"dinov2-base": 86_579_712,              # HF Dinov2Model's 86,580,480 less the unused mask token
               "clip-vit-large-patch14": 303_179_776}  # HF CLIPVisionModel's, the vision tower of CLIP ViT-L/14


@pytest.mark.parametrize("config, model, overrides, millions", BUDGETS)
def test_dry_run_reproduces_the_papers_image_budgets(capsys, config, model, overrides, millions):
    sets = [a for o in [f"model.path={_config_dir(model)}", *overrides] for a in ("--set", o)]
    train.main([str(REPO / f"configs/vision/{config}_cifar100.yaml"), *sets, "--dry-run"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    decimals = len(millions.split(".")[1])
    assert f"{last['trainable_params'] / 1e6:.{decimals}f}" == millions
    assert last["total_params"] == BASE_PARAMS[model] + last["trainable_params"]


@pytest.mark.slow
def test_tiny_digits_config_learns(tmp_path):
    """configs/vision/tiny_digits.yaml as shipped (GiVA on a random tiny ViT, real digits): validation
    accuracy from chance to well above it (359 test / 179 validation images: 10% chance, 3 sigma ~ 7 points);
    eval.py scores the saved run to the same validation accuracy."""
    pytest.importorskip("sklearn", reason="the digits file ships with scikit-learn")
    sets = ["--set", f"train.out_dir={tmp_path / 'runs'}", "--set", f"model.path={tmp_path / 'tiny_vit'}"]
    summary = train.main([str(REPO / "configs/vision/tiny_digits.yaml"), *sets])
    assert summary["val_accuracy_before"] < 0.2
    assert summary["best_val_accuracy"] > 0.4
    scores = eval_script.main(["--run", str(tmp_path / "runs/tiny_digits")])
    assert scores["val_accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1 / 179)
    assert scores["test_accuracy"] > 0.4
