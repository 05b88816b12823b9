"""Image data: readers on small files in each published format (CIFAR-100 binary, a Food101 tree of real
JPEGs, HF parquet exports), the paper's splits, and the transforms against Pillow and the HF processors."""
import io
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data.images as images
from data.image_transforms import (CLIP, DINOV2, Preprocessing, TransformedImages, center_crop, collate_images,
                                   eval_transform, example_seed, normalize, random_resized_crop_box, resize,
                                   resize_shortest, train_transform)
from data.images import (decode_image, image_splits, parquet_split, random_split_indices, read_cifar100_bin,
                         validation_size)

Image = pytest.importorskip("PIL.Image", reason="Pillow (the `vision` extra) decodes the images")


def smooth_image(h, w, seed=0, noise=20.0) -> np.ndarray:
    """(h, w, 3) uint8: smooth waves plus pixel noise (so resampling differences show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 7 + c) * np.cos(y / 5 - c) for c in range(3)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- CIFAR-100 binary ---------------------------------------------------------------------------------------


def cifar_records(n, seed=0):
    """n records as raw bytes, and their (coarse, fine, (32, 32, 3) image) contents."""
    rng = np.random.default_rng(seed)
    contents, raw = [], b""
    for _ in range(n):
        coarse, fine = int(rng.integers(20)), int(rng.integers(100))
        hwc = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        # the published layout: 1024 red bytes, then green, then blue, each row-major
        raw += bytes([coarse, fine]) + b"".join(hwc[:, :, c].tobytes() for c in range(3))
        contents.append((coarse, fine, hwc))
    return raw, contents


def cifar_dir(tmp_path, n_train=30, n_test=7):
    (tmp_path / "train.bin").write_bytes(cifar_records(n_train, 1)[0])
    (tmp_path / "test.bin").write_bytes(cifar_records(n_test, 2)[0])
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"class_{i}" for i in range(100)) + "\n")
    return tmp_path


def test_cifar_binary_records_decode_to_their_pixels_and_fine_labels(tmp_path):
    raw, contents = cifar_records(5)
    (tmp_path / "test.bin").write_bytes(raw)
    data = read_cifar100_bin(tmp_path / "test.bin")
    assert len(data) == 5
    for i, (coarse, fine, hwc) in enumerate(contents):
        image, label = data[i]
        assert label == fine and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        assert torch.equal(image, torch.from_numpy(hwc).permute(2, 0, 1))
    # one byte by hand: record 3, green plane, row 4, column 9
    assert data[3][0][1, 4, 9] == raw[3 * 3074 + 2 + 1024 + 4 * 32 + 9]


def test_cifar_splits_validation_is_torch_random_split_seed_0(tmp_path):
    splits = image_splits("cifar100", cifar_dir(tmp_path))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (27, 3, 7)
    assert len(splits.classes) == 100 and splits.classes[5] == "class_5"
    oracle = torch.utils.data.random_split(range(30), [27, 3], generator=torch.Generator().manual_seed(0))
    assert splits.train.indices == list(oracle[0]) and splits.validation.indices == list(oracle[1])
    source = read_cifar100_bin(tmp_path / "train.bin")
    j = splits.validation.indices[0]
    assert torch.equal(splits.validation[0][0], source[j][0]) and splits.validation[0][1] == source[j][1]


def test_random_split_indices_match_torch_at_the_papers_sizes():
    assert validation_size(50_000) == 5000 and validation_size(75_750) == 5000 and validation_size(1000) == 100
    train, val = random_split_indices(50_000, 5000, seed=0)
    oracle = torch.utils.data.random_split(range(50_000), [45_000, 5000], generator=torch.Generator().manual_seed(0))
    assert train == list(oracle[0]) and val == list(oracle[1])


@pytest.mark.parametrize("corrupt, message", [
    (lambda raw: raw[:-1], "not a whole number of 3074-byte"),
    (lambda raw: raw[:3074 * 2] + bytes([20]) + raw[3074 * 2 + 1:], "record 2 has coarse label 20"),
    (lambda raw: raw[:3074 + 1] + bytes([100]) + raw[3074 + 2:], "record 1 has fine label 100"),
])
def test_bad_cifar_file_names_the_file_and_record(tmp_path, corrupt, message):
    path = tmp_path / "train.bin"
    path.write_bytes(corrupt(cifar_records(4)[0]))
    with pytest.raises(ValueError, match=message) as e:
        read_cifar100_bin(path)
    assert str(path) in str(e.value)


def test_missing_cifar_class_names_is_an_error_naming_the_file(tmp_path):
    cifar_dir(tmp_path)
    (tmp_path / "fine_label_names.txt").unlink()
    with pytest.raises(FileNotFoundError, match="fine_label_names.txt"):
        image_splits("cifar100", tmp_path)


# --- Food101 -------------------------------------------------------------------------------------------------


FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava"]


def food_tree(root, per_class=12):
    """images/<class>/<id>.jpg written by Pillow; meta/ lists 3/4 of each class as train, the rest as test."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    train, test = [], []
    for c, name in enumerate(FOOD_CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for k in range(per_class):
            image_id = str(100000 + 37 * k + c)
            array = smooth_image(30 + k, 40 - k, seed=10 * c + k)
            if k == 0:  # Food101 has some grayscale JPEGs
                Image.fromarray(array[:, :, 0], mode="L").save(root / "images" / name / f"{image_id}.jpg")
            else:
                Image.fromarray(array).save(root / "images" / name / f"{image_id}.jpg", quality=90)
            (train if k < per_class * 3 // 4 else test).append(f"{name}/{image_id}")
    (root / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "meta" / "test.txt").write_text("\n".join(test) + "\n")
    return train, test


def test_food101_tree_reads_with_the_papers_splits(tmp_path):
    train_lines, test_lines = food_tree(tmp_path)
    splits = image_splits("food101", tmp_path)
    assert splits.classes == FOOD_CLASSES
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (25, 2, 9)  # 10% of 27 is 2
    source = splits.train.dataset
    assert [FOOD_CLASSES[label] for label in source.labels] == [line.split("/")[0] for line in train_lines]
    expected_val = torch.utils.data.random_split(range(27), [25, 2], generator=torch.Generator().manual_seed(0))[1]
    assert splits.validation.indices == list(expected_val)
    image, label = splits.test[0]
    path = tmp_path / "images" / (test_lines[0] + ".jpg")
    assert label == FOOD_CLASSES.index(test_lines[0].split("/")[0])
    assert torch.equal(image, torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1))
    gray, _ = source[0]  # the grayscale JPEG comes back as 3 equal channels
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_jpeg_decoding_is_close_to_what_was_written():
    array = smooth_image(48, 64, noise=0)
    decoded = decode_image(encode(array, "JPEG", quality=95), "x.jpg").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(decoded - array).mean() < 2  # lossy, but the same picture
    assert np.array_equal(decode_image(encode(array, "PNG"), "x.png").permute(1, 2, 0).numpy(), array)


def test_food101_errors_name_the_file(tmp_path):
    train_lines, _ = food_tree(tmp_path, per_class=4)
    truncated = tmp_path / "images" / (train_lines[1] + ".jpg")
    truncated.write_bytes(truncated.read_bytes()[:200])
    source = image_splits("food101", tmp_path).train.dataset
    with pytest.raises(ValueError, match="not a readable image") as e:
        source[1]
    assert str(truncated) in str(e.value)
    missing = tmp_path / "images" / (train_lines[2] + ".jpg")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        source[2]
    (tmp_path / "meta" / "test.txt").write_text("apple_pie/1\nsushi/2\n")
    with pytest.raises(ValueError, match=r"test.txt, line 2: 'sushi/2'"):
        image_splits("food101", tmp_path)
    (tmp_path / "meta" / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        image_splits("food101", tmp_path)


# --- HF parquet exports --------------------------------------------------------------------------------------


def write_parquet(path, rows, classes=None):
    """An HF datasets export: `image` {bytes, path} struct + int64 `label`, ClassLabel names in the metadata."""
    pa = pytest.importorskip("pyarrow", reason="pyarrow (the `vision` extra) reads the parquet exports")
    import pyarrow.parquet as pq
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b, _ in rows], type=image_type),
                      "label": pa.array([label for _, label in rows], type=pa.int64())})
    if classes is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


FLOWER_CLASSES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]


def flowers_export(root):
    arrays = {(split, k): smooth_image(20 + k, 24, seed=k + 7 * len(split)) for split in ("train", "validation", "test")
              for k in range(5)}
    for split in ("validation", "test"):
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet",
                      [(encode(arrays[split, k], "PNG"), k % 3) for k in range(5)], FLOWER_CLASSES)
    # two train shards, JPEG in one and PNG in the other
    write_parquet(root / "data" / "train-00000-of-00002.parquet",
                  [(encode(arrays["train", k], "PNG"), k % 3) for k in range(3)], FLOWER_CLASSES)
    write_parquet(root / "data" / "train-00001-of-00002.parquet",
                  [(encode(arrays["train", k], "JPEG"), k % 3) for k in range(3, 5)], FLOWER_CLASSES)
    return arrays


@pytest.mark.parametrize("name", ["flowers102", "resisc45"])
def test_parquet_exports_keep_their_own_splits(tmp_path, name):
    arrays = flowers_export(tmp_path)
    splits = image_splits(name, tmp_path)
    assert splits.classes == FLOWER_CLASSES
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (5, 5, 5)
    assert [splits.train[k][1] for k in range(5)] == [0, 1, 2, 0, 1]  # shard order, then row order
    for k in range(3):  # PNG rows are lossless
        assert np.array_equal(splits.train[k][0].permute(1, 2, 0).numpy(), arrays["train", k])
        assert np.array_equal(splits.test[k][0].permute(1, 2, 0).numpy(), arrays["test", k])
    assert splits.train[4][0].shape == (3, 24, 24)


def test_parquet_errors_name_the_file_and_row(tmp_path):
    good = encode(smooth_image(8, 8), "PNG")
    write_parquet(tmp_path / "a" / "train-00000-of-00001.parquet", [(good, 0), (good, 3)], FLOWER_CLASSES)
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet, row 1: label 3 is not in 0..2"):
        parquet_split(tmp_path / "a", "train")
    write_parquet(tmp_path / "b" / "train-00000-of-00001.parquet", [(good, 0)])
    with pytest.raises(ValueError, match=r"train-00000-of-00001.parquet: no class names"):
        parquet_split(tmp_path / "b", "train")
    write_parquet(tmp_path / "c" / "train-00000-of-00001.parquet", [(good, 0), (b"\x89PNG garbage", 1)], FLOWER_CLASSES)
    data, _ = parquet_split(tmp_path / "c", "train")
    with pytest.raises(ValueError, match=r"row 1: not a readable image"):
        data[1]
    with pytest.raises(FileNotFoundError, match="no validation-\\*.parquet"):
        parquet_split(tmp_path / "c", "validation")
    with pytest.raises(ValueError, match="unknown image data set 'imagenet'"):
        image_splits("imagenet", tmp_path)


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    def absent(name):
        raise ImportError(name)
    monkeypatch.setattr(images.importlib, "import_module", absent)
    with pytest.raises(ImportError, match=r"Pillow: pip install '.\[vision\]'"):
        decode_image(b"", "x.png")


# --- transforms ------------------------------------------------------------------------------------------------


def pil_resize(hwc: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.array(Image.fromarray(hwc).resize((width, height), Image.BICUBIC))


def chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)


@pytest.mark.parametrize("shape, size", [((97, 131), (224, 224)), ((300, 280), (224, 224)), ((50, 60), (31, 45))])
def test_bicubic_resize_follows_pillow(shape, size):
    hwc = smooth_image(*shape)
    ours = resize(chw(hwc), *size).permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ours - pil_resize(hwc, *size).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.1  # Pillow's fixed-point rounding vs torch's


def test_eval_transform_is_pillow_resize_center_crop_normalise():
    hwc = smooth_image(233, 301)
    new_w = int(256 * 301 / 233)  # the shorter side to 256, the longer truncated
    resized = pil_resize(hwc, 256, new_w)
    top, left = (256 - 224) // 2, (new_w - 224) // 2
    reference = normalize(chw(resized[top:top + 224, left:left + 224]), DINOV2)
    ours = eval_transform(chw(hwc), DINOV2)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert (ours - reference).abs().max() <= 2 / 255 / min(DINOV2.std) + 1e-6
    assert resize_shortest(chw(hwc), 256).shape == (3, 256, new_w)
    assert center_crop(torch.arange(35).view(1, 5, 7), 2).tolist() == [[[9, 10], [16, 17]]]  # margins 1 above, 2 below


PREPROCESSOR_CONFIGS = {  # as the publishers ship them (facebook/dinov2-base, openai/clip-vit-large-patch14)
    "dinov2": {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
               "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
               "image_processor_type": "BitImageProcessor", "image_std": [0.229, 0.224, 0.225], "resample": 3,
               "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}},
    "clip": {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
             "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
}


@pytest.mark.parametrize("family, preset", [("dinov2", DINOV2), ("clip", CLIP)])
def test_preprocessor_config_and_the_hf_processor(tmp_path, family, preset):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIGS[family]))
    prep = Preprocessing.from_config(tmp_path / "preprocessor_config.json")
    assert prep == preset
    transformers = pytest.importorskip("transformers", reason="the HF image processors are the test-time oracle")
    processor_class = transformers.BitImageProcessor if family == "dinov2" else transformers.CLIPImageProcessor
    processor = processor_class.from_pretrained(tmp_path)
    for shape in [(233, 301), (320, 240)]:
        hwc = smooth_image(*shape, seed=shape[0])
        expected = processor(Image.fromarray(hwc), return_tensors="pt")["pixel_values"][0]
        ours = eval_transform(chw(hwc), prep)
        diff = (ours - expected).abs()
        assert diff.max() <= 2 / 255 / min(prep.std) + 1e-5 and diff.mean() < 1e-3


@pytest.mark.parametrize("config, message", [
    ({"image_mean": [0.5, 0.5], "image_std": [1, 1, 1], "size": 224, "crop_size": 224}, "unsupported 'image_mean'"),
    ({"image_mean": [0.5] * 3, "image_std": [1, 1, 1], "crop_size": 224}, "no 'size'"),
    ({"image_mean": [0.5] * 3, "image_std": [1] * 3, "size": 224, "crop_size": {"height": 224, "width": 200}},
     "unsupported 'crop_size'"),
    ({"image_mean": [0.5] * 3, "image_std": [1] * 3, "size": 224, "crop_size": 224, "resample": 2}, "not bicubic"),
    ({"image_mean": [0.5] * 3, "image_std": [1] * 3, "size": 200, "crop_size": 224}, "smaller than crop_size"),
])
def test_bad_preprocessor_config_names_the_file_and_key(tmp_path, config, message):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_config(path)


def test_random_resized_crop_boxes_cover_half_to_all_within_the_ratio():
    gen = torch.Generator().manual_seed(0)
    boxes = [random_resized_crop_box(300, 400, gen) for _ in range(2000)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        # rounding w and h moves the area and aspect a little past the bounds
        assert 0.49 <= h * w / (300 * 400) <= 1.0 and 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
    fractions = torch.tensor([h * w / 120_000 for _, _, h, w in boxes])
    assert fractions.min() < 0.52 and fractions.max() > 0.97
    log_aspects = torch.tensor([np.log(w / h) for _, _, h, w in boxes])
    assert log_aspects.min() < np.log(3 / 4) + 0.02 and log_aspects.max() > np.log(4 / 3) - 0.02
    same = torch.Generator().manual_seed(0)
    assert [random_resized_crop_box(300, 400, same) for _ in range(5)] == boxes[:5]


def test_random_resized_crop_falls_back_to_a_center_crop_in_the_ratio():
    gen = torch.Generator().manual_seed(0)
    # a 1 x 100 strip: no try can fit, so the widest centered crop with aspect 4/3 at most: 1 x 1
    assert random_resized_crop_box(1, 100, gen) == (0, 49, 1, 1)
    assert random_resized_crop_box(100, 2, gen) == (48, 0, 3, 2)  # too tall: width kept, h = round(2 / (3/4)) = 3


def test_random_resized_crop_draws_like_torchvision():
    tv = pytest.importorskip("torchvision.transforms", reason="torchvision is the oracle for the crop box draws")
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    for seed in range(50):
        torch.manual_seed(seed)
        expected = tv.RandomResizedCrop.get_params(image, scale=[0.5, 1.0], ratio=[3 / 4, 4 / 3])
        assert random_resized_crop_box(300, 400, torch.Generator().manual_seed(seed)) == tuple(expected)


def test_train_transform_is_the_box_resized_by_pillow_then_flipped_and_normalised():
    hwc = smooth_image(180, 250)
    flips = []
    for seed in range(6):
        ours = train_transform(chw(hwc), CLIP, torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)  # the same draws, replayed
        top, left, h, w = random_resized_crop_box(180, 250, gen)
        flip = torch.rand(1, generator=gen).item() < 0.5
        crop = pil_resize(np.ascontiguousarray(hwc[top:top + h, left:left + w]), 224, 224)
        reference = normalize(chw(crop[:, ::-1] if flip else crop), CLIP)
        assert (ours - reference).abs().max() <= 2 / 255 / min(CLIP.std) + 1e-5
        flips.append(flip)
    assert any(flips) and not all(flips)


class Toys(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return chw(smooth_image(40 + i, 50, seed=i)), i % 3


def test_worker_loading_is_deterministic_and_epochs_differ():
    data = TransformedImages(Toys(), DINOV2, train=True, seed=3)

    def epoch_batches(epoch, workers):
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate_images)
        return [batch["pixel_values"] for batch in loader]

    in_process, in_workers = epoch_batches(0, 0), epoch_batches(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
    assert not torch.equal(epoch_batches(1, 0)[0], in_process[0])
    batch = collate_images([data[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 224, 224) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 2] and batch["labels"].dtype == torch.long
    test = TransformedImages(Toys(), DINOV2, train=False)
    assert torch.equal(test[5][0], eval_transform(Toys()[5][0], DINOV2))
    seeds = {example_seed(s, e, i) for s in range(3) for e in range(10) for i in range(100)}
    assert len(seeds) == 3000 and max(seeds) < 2 ** 32  # distinct, and within what the generator keeps
