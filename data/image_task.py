"""Image classification as a task object for train.py (see data/tasks.py), the paper's Table 5 setting.

    task = ImageClassificationTask(image_splits("cifar100", root), Preprocessing.from_config(...), seed=0)
    task.train, task.val, task.test    deferred items: task.train[i] is a reference (split, i), cheap
    task.collate(items)                -> {"pixel_values": (B, 3, S, S) float, "labels": (B,) long}: decodes
                                          and transforms the images, in `workers` threads when > 0
    task.set_epoch(e)                  the training augmentation of epoch e (train.py calls it)
    task.num_labels, task.metric       the head size; "accuracy"
    task.evaluate(model, items)        -> {"accuracy": ...}

Decoding and transforming happen in collate, not when an item is indexed, so a pool of threads can do a
micro-batch at once (Pillow's decoder and torch's resize release the GIL); the per-example seeds of
data/image_transforms.py make the batches the same whatever the number of threads. On CUDA the forward of
one micro-batch runs while the CPU prepares the next (train.py does not wait on the device per step).
"""
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset

from .image_transforms import Preprocessing, TransformedImages, collate_images
from .images import ImageSplits


class Deferred:
    """A split whose items are (split, index) references, fetched by the task's collate."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if not 0 <= i < len(self.dataset):
            raise IndexError(f"index {i} out of range for {len(self.dataset)} images")
        return self.dataset, i


class ImageClassificationTask:
    metric = "accuracy"

    def __init__(self, splits: ImageSplits, prep: Preprocessing, seed: int = 0, workers: int = 0,
                 eval_batch_size: int = 64):
        self.classes, self.num_labels = splits.classes, len(splits.classes)
        self.eval_batch_size = eval_batch_size
        self._train = TransformedImages(splits.train, prep, train=True, seed=seed)
        self.train = Deferred(self._train)
        self.val = Deferred(TransformedImages(splits.validation, prep, train=False))
        self.test = Deferred(TransformedImages(splits.test, prep, train=False))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="images") if workers else None

    def set_epoch(self, epoch: int):
        self._train.set_epoch(epoch)

    def collate(self, items) -> dict:
        fetch = (lambda item: item[0][item[1]])
        examples = list(self._pool.map(fetch, items)) if self._pool else [fetch(item) for item in items]
        return collate_images(examples)

    @torch.no_grad()
    def predict(self, model, items) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class ids (N,), labels (N,)) for `items`, in their order."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        preds, labels = [], []
        try:
            for s in range(0, len(items), self.eval_batch_size):
                batch = self.collate([items[i] for i in range(s, min(s + self.eval_batch_size, len(items)))])
                preds.append(model(batch["pixel_values"].to(device)).argmax(-1).cpu())
                labels.append(batch["labels"])
        finally:
            model.train(was_training)
        return torch.cat(preds), torch.cat(labels)

    def evaluate(self, model, items) -> dict:
        preds, labels = self.predict(model, items)
        return {"accuracy": (preds == labels).float().mean().item()}
