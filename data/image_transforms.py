"""The paper's image transforms in torch on uint8 tensors (methods.md section 8, "Images"), no torchvision.

    train : RandomResizedCrop(S, scale=(0.5, 1), ratio=(3/4, 4/3), bicubic) + horizontal flip (p = 0.5),
            then the model's normalisation (the HF processor with resize and crop off)
    test  : the HF processor's defaults: resize the shorter side (bicubic), center crop S, normalise
    S = the processor's crop size (224); normalise: (x / 255 - mean) / std with the model's mean and std

Bicubic resizing is torch's antialiased uint8 kernel, which follows Pillow's (what torchvision and the HF
processors resize PIL images with) to within one or two levels. The crop box is drawn as torchvision's
RandomResizedCrop.get_params draws it, from a torch.Generator seeded per example and epoch, so a
DataLoader's worker processes give the same batches whatever the number of workers.
"""
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SCALE, RATIO = (0.5, 1.0), (3 / 4, 4 / 3)
BICUBIC = 3  # PIL.Image.BICUBIC, the `resample` code of preprocessor_config.json


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_shortest: int  # test time: the shorter side is resized to this
    crop_size: int        # the square model input: RandomResizedCrop's size, the test center crop

    def __post_init__(self):
        if self.resize_shortest < self.crop_size:
            raise ValueError(f"resize_shortest {self.resize_shortest} is smaller than crop_size {self.crop_size}")

    @classmethod
    def from_config(cls, path) -> "Preprocessing":
        """From a checkpoint's preprocessor_config.json (both the `size: 224` and `{"shortest_edge": 224}`
        forms, as CLIP's and DINOv2's files have them)."""
        path = Path(path)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: preprocessor config not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None

        def field(key, check):
            if key not in config:
                raise ValueError(f"{path}: no '{key}'")
            value = check(config[key])
            if value is None:
                raise ValueError(f"{path}: unsupported '{key}': {config[key]!r}")
            return value

        def three_floats(v):
            ok = isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
            return tuple(float(x) for x in v) if ok else None

        def shortest(v):
            v = v.get("shortest_edge") if isinstance(v, dict) and len(v) == 1 else v
            return v if isinstance(v, int) and v > 0 else None

        def square(v):
            if isinstance(v, dict) and set(v) == {"height", "width"} and v["height"] == v["width"]:
                v = v["height"]
            return v if isinstance(v, int) and v > 0 else None

        if config.get("resample", BICUBIC) != BICUBIC:
            raise ValueError(f"{path}: resample {config['resample']} is not bicubic ({BICUBIC}), the one supported")
        if abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
            raise ValueError(f"{path}: rescale_factor {config['rescale_factor']} is not 1/255")
        return cls(field("image_mean", three_floats), field("image_std", three_floats), field("size", shortest),
                   field("crop_size", square))


# The publishers' processors (facebook/dinov2-*, openai/clip-vit-*), for dry runs without the file.
DINOV2 = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize_shortest=256, crop_size=224)
CLIP = Preprocessing((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                     resize_shortest=224, crop_size=224)


def _uniform(gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    return torch.empty(1).uniform_(low, high, generator=gen)  # (1,) float32


def random_resized_crop_box(height: int, width: int, gen: torch.Generator, scale=SCALE, ratio=RATIO):
    """(top, left, h, w) of a crop covering a `scale` fraction of the image with aspect w/h in `ratio`
    (log-uniform); 10 tries, then the largest center crop with an aspect in `ratio`. The same draws, in the
    same order and float32 arithmetic, as torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision has it
    for _ in range(10):
        target_area = area * _uniform(gen, *scale).item()
        aspect = torch.exp(_uniform(gen, log_ratio[0].item(), log_ratio[1].item())).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, height, width) uint8, antialiased bicubic as Pillow resizes."""
    return F.interpolate(image[None], size=(height, width), mode="bicubic", antialias=True)[0]


def resize_shortest(image: torch.Tensor, size: int) -> torch.Tensor:
    """The shorter side to `size`, the longer to int(size * long / short), as the HF processors compute it."""
    h, w = image.shape[-2:]
    if h <= w:
        return resize(image, size, int(size * w / h))
    return resize(image, int(size * h / w), size)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window; odd margins put the extra pixel at the bottom/right (HF's rule)."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} image is smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]


def normalize(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(3, H, W) uint8 -> float32 (x / 255 - mean) / std per channel."""
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


def train_transform(image: torch.Tensor, prep: Preprocessing, gen: torch.Generator) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, S, S) float: random resized crop, horizontal flip with p = 0.5, normalisation."""
    top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], gen)
    crop = resize(image[:, top:top + h, left:left + w], prep.crop_size, prep.crop_size)  # (3, S, S)
    if torch.rand(1, generator=gen).item() < 0.5:
        crop = crop.flip(-1)
    return normalize(crop, prep)


def eval_transform(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, S, S) float: shorter side resize, center crop, normalisation."""
    return normalize(center_crop(resize_shortest(image, prep.resize_shortest), prep.crop_size), prep)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit generator seed for (seed, epoch, example index). torch's CPU generator keeps only the low
    32 bits of its seed, so the triple is hashed to 32 bits rather than packed into a wider integer."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class TransformedImages(Dataset):
    """(image uint8, label) items -> (pixel values (3, S, S) float, label). Training items are augmented with
    a generator seeded by (seed, epoch, index); call set_epoch(e) before iterating epoch e (with
    persistent_workers=False, so the workers see it)."""

    def __init__(self, images: Dataset, prep: Preprocessing, train: bool, seed: int = 0):
        self.images, self.prep, self.train, self.seed, self.epoch = images, prep, train, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, label = self.images[i]
        if self.train:
            gen = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, i))
            return train_transform(image, self.prep, gen), label
        return eval_transform(image, self.prep), label


def collate_images(batch) -> dict:
    """[(pixel values (3, S, S), label)] -> {"pixel_values": (B, 3, S, S) float, "labels": (B,) long}."""
    return {"pixel_values": torch.stack([pixels for pixels, _ in batch]),
            "labels": torch.tensor([label for _, label in batch], dtype=torch.long)}
