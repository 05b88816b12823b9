"""The image classification task (data/image_task.py, data.task=images) and scikit-learn's digits reader."""
import gzip
import importlib.util

import pytest
import torch

from data.image_task import ImageClassificationTask
from data.image_transforms import DINOV2, Preprocessing
from data.images import digits_splits, image_splits, read_digits
from data.tasks import build_task
from experiment import ConfigError, load_experiment
from models import load_model, write_random_checkpoint
from tiny_run import REPO

TINY_DIGITS = REPO / "configs/vision/tiny_digits.yaml"
PREP = Preprocessing(DINOV2.mean, DINOV2.std, resize_shortest=16, crop_size=16)


@pytest.fixture
def digits_file():
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        pytest.skip("scikit-learn (which ships digits.csv.gz) is not installed")
    return spec.submodule_search_locations[0] + "/datasets/data/digits.csv.gz"


def test_digits_reader_on_the_real_file(digits_file):
    images = read_digits(digits_file)
    assert images.pixels.shape == (1797, 3, 8, 8) and images.pixels.dtype == torch.uint8
    assert torch.equal(images.pixels[:, 0], images.pixels[:, 2])  # grey
    assert int(images.pixels.max()) == 255 and int(images.pixels.min()) == 0
    assert torch.bincount(images.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    first = gzip.decompress(open(digits_file, "rb").read()).decode().splitlines()[0].split(",")
    assert images.pixels[0, 0].flatten().tolist() == [round(int(v) * 255 / 16) for v in first[:64]]
    s = digits_splits(digits_file)
    assert (len(s.train), len(s.validation), len(s.test)) == (1259, 179, 359)
    seen = [set(part.indices) for part in (s.train, s.validation, s.test)]
    assert set.union(*seen) == set(range(1797)) and sum(map(len, seen)) == 1797


def test_digits_reader_errors(tmp_path):
    bad = tmp_path / "digits.csv.gz"
    bad.write_bytes(gzip.compress(b"0," * 64 + b"3\n" + b"0," * 63 + b"17,3\n"))
    with pytest.raises(ValueError, match=r"digits.csv.gz, line 2: expected 64 pixel values in 0..16"):
        read_digits(bad)
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzip'd CSV"):
        read_digits(bad)
    with pytest.raises(FileNotFoundError, match="digits file not found"):
        read_digits(tmp_path / "absent.csv.gz")


def test_collate_is_the_same_with_threads_and_set_epoch_changes_the_draws(digits_file):
    splits = image_splits("digits", digits_file)
    one, many = ImageClassificationTask(splits, PREP, seed=3), ImageClassificationTask(splits, PREP, seed=3, workers=3)
    items = [one.train[i] for i in range(10)]
    a, b = one.collate(items), many.collate([many.train[i] for i in range(10)])
    assert a["pixel_values"].shape == (10, 3, 16, 16) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["labels"], torch.tensor([splits.train[i][1] for i in range(10)]))
    one.set_epoch(1)
    assert not torch.equal(one.collate(items)["pixel_values"], a["pixel_values"])
    val = one.collate([one.val[i] for i in range(4)])["pixel_values"]
    one.set_epoch(2)
    assert torch.equal(one.collate([one.val[i] for i in range(4)])["pixel_values"], val)  # test transform: fixed
    with pytest.raises(IndexError):
        one.train[len(one.train)]


def test_evaluate_is_accuracy_of_the_argmax(digits_file, tmp_path):
    task = ImageClassificationTask(image_splits("digits", digits_file), PREP, eval_batch_size=16)
    model = load_model(write_random_checkpoint(tmp_path / "vit", family="clip_vision_model", image_size=16,
                                               patch_size=8), num_labels=10)
    batch = task.collate([task.val[i] for i in range(len(task.val))])
    with torch.no_grad():
        expected = (model(batch["pixel_values"]).argmax(-1) == batch["labels"]).float().mean().item()
    assert task.evaluate(model, task.val)["accuracy"] == pytest.approx(expected)


def test_build_task_reads_the_checkpoints_image_processor(digits_file, tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "vit", family="dinov2", image_size=24, patch_size=8)
    exp = load_experiment(TINY_DIGITS, [f"model.path={ckpt}", f"data.path={digits_file}"])
    task = build_task(exp, ckpt)  # no tokenizer files: none is read
    assert task.num_labels == 10 and task.collate([task.val[0]])["pixel_values"].shape == (1, 3, 24, 24)
    (ckpt / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json: preprocessor config not found"):
        build_task(exp, ckpt)
    with pytest.raises(ValueError, match="data.task=images needs data.dataset"):
        build_task(load_experiment(TINY_DIGITS, ["data.dataset=''"]), ckpt)


def test_dataset_choices_are_checked():
    with pytest.raises(ConfigError, match="bad value 'cifar10' for 'data.dataset'.*cifar100, food101"):
        load_experiment(TINY_DIGITS, ["data.dataset=cifar10"])
