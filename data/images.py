"""Image classification data sets in their published formats, and the paper's splits (methods.md section 8,
"Images"). Every item is (image (3, H, W) uint8 RGB, label int); data/image_transforms.py turns it into
model input.

    CIFAR-100    binary version: train.bin / test.bin, records of 1 coarse label byte, 1 fine label byte and
                 3072 pixel bytes (1024 R, 1024 G, 1024 B, rows of 32); classes from fine_label_names.txt
    Food101      images/<class>/<id>.jpg with meta/classes.txt, meta/train.txt, meta/test.txt
    Flowers102,  HF parquet exports (dpdl-benchmark/oxford_flowers102, timm/resisc45): <split>-*.parquet files
    RESISC45     with an `image` struct column {bytes, path} and an int `label`; class names from the
                 schema's `huggingface` metadata
    digits       scikit-learn's bundled 8x8 digits (sklearn/datasets/data/digits.csv.gz: 1797 lines of 64
                 pixel values 0..16 and the digit), the small real data set of the CPU smoke run and tests

Splits: CIFAR-100 and Food101 validate on a random_split of train (min(10%, 5000) examples, generator seed 0,
as torch.utils.data.random_split(train, [n - n_val, n_val]) draws it) and test on the official test split
(Food101's `test.txt`, which the HF export calls `validation`). The permutation is over the rows in the order
read here: CIFAR's file order, Food101's meta/train.txt order. The paper permuted the rows of the HF exports;
that they list CIFAR in the binary file's order is likely but not verified here, and HF's Food101 script
[inferred] yielded its rows in archive order, not meta/train.txt's. To reproduce the paper's validation set
exactly, read the HF export itself with `parquet_split(root, "train")` and `split_off_validation`.
Flowers102 and RESISC45 use their exports' own train / validation / test splits. digits has no official
split: one seed-0 permutation gives 10% validation, 20% test and the rest for training.

pyarrow and Pillow are optional (the `vision` extra) and imported only when an image is read.
"""
import gzip
import importlib
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

CIFAR_RECORD = 2 + 3 * 32 * 32
CIFAR_FINE_CLASSES, CIFAR_COARSE_CLASSES = 100, 20


def _vision_module(name: str):
    """pyarrow or PIL, or an error that says how to install them."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = {"PIL": "Pillow", "pyarrow.parquet": "pyarrow"}[name]
        message = f"reading images needs {package}: pip install '.[vision]' (or pip install {package})"
        raise ImportError(message) from None


def decode_image(data: bytes, origin: str) -> torch.Tensor:
    """JPEG/PNG/... bytes -> (3, H, W) uint8 RGB; an undecodable image is an error naming `origin`."""
    Image = _vision_module("PIL").Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")  # decodes the whole image: a truncated file fails here
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{origin}: not a readable image ({e})") from None
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # (3, H, W)


class TensorImages(Dataset):
    """Images held decoded in memory: pixels (N, 3, H, W) uint8, labels (N,) long."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.pixels[i], int(self.labels[i])


class EncodedImages(Dataset):
    """Images kept encoded and decoded on access (in the DataLoader's workers): each item is a file path or
    the file's bytes; `origins[i]` names it in errors."""

    def __init__(self, items: list, labels: list[int], origins: list[str]):
        self.items, self.labels, self.origins = items, labels, origins

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = self.items[i]
        if isinstance(item, Path):
            try:
                item = item.read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.origins[i]}: image file not found") from None
        return decode_image(item, self.origins[i]), self.labels[i]


@dataclass
class ImageSplits:
    train: Dataset
    validation: Dataset
    test: Dataset
    classes: list[str]


def validation_size(n_train: int) -> int:
    """min(10%, 5000) of the training examples."""
    return min(n_train // 10, 5000)


def random_split_indices(n: int, n_val: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) indices exactly as torch.utils.data.random_split(range(n), [n - n_val, n_val],
    generator=torch.Generator().manual_seed(seed)): one randperm, train its first n - n_val entries."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:n - n_val], order[n - n_val:]


def split_off_validation(train: Dataset, seed: int = 0) -> tuple[Subset, Subset]:
    train_idx, val_idx = random_split_indices(len(train), validation_size(len(train)), seed)
    return Subset(train, train_idx), Subset(train, val_idx)


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None


# --- CIFAR-100 -------------------------------------------------------------------------------------------


def read_cifar100_bin(path) -> TensorImages:
    """One CIFAR-100 binary file -> its images with their fine labels, in file order."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: CIFAR-100 file not found") from None
    if not raw or len(raw) % CIFAR_RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-100 records")
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, CIFAR_RECORD)  # (N, 3074)
    for column, n_classes, what in ((0, CIFAR_COARSE_CLASSES, "coarse"), (1, CIFAR_FINE_CLASSES, "fine")):
        bad = (records[:, column] >= n_classes).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{path}: record {i} has {what} label {int(records[i, column])} (>= {n_classes})")
    pixels = records[:, 2:].reshape(-1, 3, 32, 32).clone()  # (N, 3, 32, 32): channel planes, rows of 32
    return TensorImages(pixels, records[:, 1].long())


def cifar100_train_test(root) -> tuple[TensorImages, TensorImages, list[str]]:
    """<root>/train.bin, test.bin and fine_label_names.txt (the cifar-100-binary folder)."""
    root = Path(root)
    classes = _read_lines(root / "fine_label_names.txt")
    if len(classes) != CIFAR_FINE_CLASSES:
        raise ValueError(f"{root / 'fine_label_names.txt'}: {len(classes)} class names, expected {CIFAR_FINE_CLASSES}")
    return read_cifar100_bin(root / "train.bin"), read_cifar100_bin(root / "test.bin"), classes


# --- Food101 ----------------------------------------------------------------------------------------------


def read_food101_split(root, split: str, classes: list[str]) -> EncodedImages:
    """meta/<split>.txt ("<class>/<id>" lines) -> images/<class>/<id>.jpg with the class's index."""
    root = Path(root)
    listing = root / "meta" / f"{split}.txt"
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for line_no, line in enumerate(_read_lines(listing), 1):
        name, sep, image_id = line.partition("/")
        if not sep or not image_id or name not in index:
            raise ValueError(f"{listing}, line {line_no}: {line!r} is not '<class>/<id>' with a class of "
                             "meta/classes.txt")
        paths.append(root / "images" / name / f"{image_id}.jpg")
        labels.append(index[name])
    return EncodedImages(paths, labels, [str(p) for p in paths])


def food101_train_test(root) -> tuple[EncodedImages, EncodedImages, list[str]]:
    """<root> is the extracted food-101 folder (images/ and meta/)."""
    classes = _read_lines(Path(root) / "meta" / "classes.txt")
    return read_food101_split(root, "train", classes), read_food101_split(root, "test", classes), classes


# --- HF parquet exports (Flowers102, RESISC45) --------------------------------------------------------------


def parquet_files(root, split: str) -> list[Path]:
    """<split>-*.parquet (or <split>.parquet) anywhere under root, sorted (shard order)."""
    files = sorted(p for p in Path(root).rglob("*.parquet")
                   if p.name.startswith(f"{split}-") or p.name == f"{split}.parquet")
    if not files:
        raise FileNotFoundError(f"{root}: no {split}-*.parquet file")
    return files


def parquet_class_names(path: Path) -> list[str]:
    """The `label` ClassLabel names from the schema's `huggingface` metadata."""
    metadata = _vision_module("pyarrow.parquet").read_schema(path).metadata or {}
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        return list(features["label"]["names"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{path}: no class names (huggingface schema metadata with a ClassLabel 'label')") from None


def parquet_split(root, split: str) -> tuple[EncodedImages, list[str]]:
    """A split of an HF image export: its rows (encoded image bytes, label) in file order, and the class names."""
    pq = _vision_module("pyarrow.parquet")
    items, labels, origins, classes = [], [], [], None
    for path in parquet_files(root, split):
        try:
            table = pq.read_table(path, columns=["image", "label"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow's errors subclass these
            raise ValueError(f"{path}: not an HF image parquet with 'image' and 'label' columns ({e})") from None
        names = parquet_class_names(path)
        if classes is not None and names != classes:
            raise ValueError(f"{path}: class names differ from the other {split} shards")
        classes = names
        images, file_labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        for row, (image, label) in enumerate(zip(images, file_labels)):
            origin = f"{path}, row {row}"
            if not isinstance(image, dict) or not isinstance(image.get("bytes"), bytes):
                raise ValueError(f"{origin}: the image has no embedded bytes")
            if not isinstance(label, int) or not 0 <= label < len(classes):
                raise ValueError(f"{origin}: label {label!r} is not in 0..{len(classes) - 1}")
            items.append(image["bytes"]), labels.append(label), origins.append(origin)
    return EncodedImages(items, labels, origins), classes


def parquet_splits(root) -> ImageSplits:
    """An export's own train / validation / test splits."""
    (train, classes), (validation, val_classes), (test, test_classes) = (parquet_split(root, s) for s in
                                                                         ("train", "validation", "test"))
    if not classes == val_classes == test_classes:
        raise ValueError(f"{root}: the train, validation and test splits name different classes")
    return ImageSplits(train, validation, test, classes)


# --- scikit-learn's digits ---------------------------------------------------------------------------------

DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the installed sklearn package


def sklearn_digits_file() -> Path:
    """The digits.csv.gz that scikit-learn ships, found without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the digits data set ships with scikit-learn, which is not installed "
                                "(pip install scikit-learn), or give its digits.csv.gz as data.path")
    return Path(spec.submodule_search_locations[0]).joinpath(*DIGITS_FILE)


def read_digits(path) -> TensorImages:
    """digits.csv.gz -> (N, 3, 8, 8) uint8 grey images (values 0..16 scaled to 0..255), labels 0..9."""
    path = Path(path)
    try:
        lines = gzip.decompress(path.read_bytes()).decode("ascii").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: digits file not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a gzip'd CSV ({e})") from None
    rows = []
    for line_no, line in enumerate(lines, 1):
        try:
            values = [int(v) for v in line.split(",")]
        except ValueError:
            values = []
        if len(values) != 65 or not all(0 <= v <= 16 for v in values[:64]) or not 0 <= values[64] <= 9:
            raise ValueError(f"{path}, line {line_no}: expected 64 pixel values in 0..16 and a digit 0..9")
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no digits")
    table = torch.tensor(rows)  # (N, 65)
    grey = torch.round(table[:, :64].float() * (255 / 16)).to(torch.uint8).view(-1, 1, 8, 8)
    return TensorImages(grey.expand(-1, 3, -1, -1).contiguous(), table[:, 64])


def digits_splits(path=None, seed: int = 0) -> ImageSplits:
    """train / validation (10%) / test (20%) of the digits, by one randperm with generator seed `seed`."""
    images = read_digits(path or sklearn_digits_file())
    n = len(images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, n_test = n // 10, n // 5
    return ImageSplits(Subset(images, order[n_val + n_test:]), Subset(images, order[:n_val]),
                       Subset(images, order[n_val:n_val + n_test]), [str(d) for d in range(10)])


# Data sets validated on a random split of train: name -> reader of (train, test, classes)
RANDOM_VALIDATION = {"cifar100": cifar100_train_test, "food101": food101_train_test}
OWN_SPLITS = ("flowers102", "resisc45")  # HF parquet exports with train / validation / test


IMAGE_DATASETS = (*RANDOM_VALIDATION, *OWN_SPLITS, "digits")


def image_splits(name: str, root, seed: int = 0) -> ImageSplits:
    """The paper's train / validation / test splits of data set `name` read from `root` (digits: an empty
    root is scikit-learn's own file)."""
    if name == "digits":
        return digits_splits(root or None, seed)
    if name in OWN_SPLITS:
        return parquet_splits(root)
    if name not in RANDOM_VALIDATION:
        choices = ", ".join(IMAGE_DATASETS)
        raise ValueError(f"unknown image data set {name!r}; choices: {choices}")
    train, test, classes = RANDOM_VALIDATION[name](root)
    train, validation = split_off_validation(train, seed)
    return ImageSplits(train, validation, test, classes)
