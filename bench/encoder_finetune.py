"""A small, complete fine-tuning loop for encoder classifiers, used by bench/glue_small.py: probe ->
adapters -> AdamW over the adapter tensors and the head -> per-epoch validation. train.py is the project's
full trainer (one run per YAML); this loop runs the benchmark's many task x method x seed runs in one
process, with the same recipe as the paper's GLUE runs (methods.md 7): AdamW, linear schedule with warmup,
gradient clipping at 1.0, validation every epoch, best epoch reported. The head trains fully (peft's
modules_to_save).
"""
import math
import time

import torch

from giva import AdapterConfig, adapter_parameters, apply_adapters, count_parameters, estimate_gradients


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def finetune(model, task, adapter: AdapterConfig, *, epochs: int, batch_size: int, lr: float,
             weight_decay: float = 0.0, warmup_ratio: float = 0.06, grad_clip: float = 1.0, seed: int = 0,
             max_steps: int = 0, log=print) -> dict:
    """Fine-tune `model` (on its device) in place; returns the metrics before, after every epoch, the best."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    to_device = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731

    def mean_loss(m, batch):
        total, n = task.loss(m, batch)
        return total / n, n

    start = time.perf_counter()
    if adapter.method == "giva":
        probe = [to_device(task.collate([task.train[i] for i in _batches(len(task.train), batch_size, g)[0]]))]
        grads = estimate_gradients(model, probe, mean_loss, targets=adapter.targets)
        apply_adapters(model, adapter, grads=grads)
    else:
        apply_adapters(model, adapter)
    head = model.head_parameters()
    for p in head:
        p.requires_grad_(True)
    params = list({id(p): p for p in adapter_parameters(model) + head}.values())
    counts = count_parameters(model)
    trainable = sum(p.numel() for p in params)
    log(f"{adapter.method}: {counts['trainable']:,} adapter + {sum(p.numel() for p in head):,} head parameters")

    before = task.evaluate(model, task.val)
    log(f"before: {before}")
    steps_per_epoch = math.ceil(len(task.train) / batch_size)
    total_steps = min(steps_per_epoch * epochs, max_steps or steps_per_epoch * epochs)
    warmup = int(warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    history, step = [], 0
    model.train()
    for epoch in range(epochs):
        for idx in _batches(len(task.train), batch_size, g):
            if step == total_steps:
                break
            total, n = task.loss(model, to_device(task.collate([task.train[i] for i in idx])))
            (total / n).backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        scores = task.evaluate(model, task.val)
        history.append(scores)
        log(f"epoch {epoch + 1}: {scores} (step {step}, loss {total.item() / n.item():.4f})")
    best = max(history, key=lambda s: s[task.metric])
    return {"before": before, "after": history[-1], "best": best, "history": history,
            "trainable_params": trainable, "adapter_params": counts["trainable"],
            "wall_s": time.perf_counter() - start, "steps": step}
