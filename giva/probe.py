"""The first-step gradient probe: G = dL/dW0 for every target weight, averaged over K batches.

Only the target weights require grad during the probe (activation gradients still flow through the
frozen rest), and a post-accumulate-grad hook on each target weight adds its fresh .grad into an fp32
accumulator (optionally on the CPU) and frees it at once, so at most one layer's gradient lives in
.grad at any time. Every parameter's requires_grad and the model's train/eval mode are restored after.

Weighting. `loss_fn(model, batch)` returns either a scalar loss (the mean over the batch's target tokens),
and then every batch counts equally: G = (1/K) sum_b G_b; or a pair (loss, n_tokens), and then
G = sum_b n_b G_b / sum_b n_b, which is the gradient of the token-normalised loss over all K batches
together, the same normalisation as gradient accumulation in training.

Deliberate differences from the official estimate_gradient (methods.md 9): exactly K = len(batches)
batches (no off-by-one), only the target weights' gradients are kept, accumulation is in fp32 whatever
the weights' dtype. Autocast and position ids are the caller's (they live in loss_fn), so the probe sees
the same forward as training. `checkpoint_blocks` names a ModuleList (e.g. "layers") whose blocks are then
recomputed in the backward pass (non-reentrant activation checkpointing), for long probe batches.

A model sharded by FSDP2 (train.parallel: fsdp): its weights are DTensors that FSDP itself gives a
reduce-scattered (already summed over the processes) .grad after each backward, without the hooks; that shard
is added into an fp32 accumulator of the same layout, so each process holds 1/N of every gradient.
"""
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from giva.inject import find_targets


@contextmanager
def _checkpointed(model: nn.Module, blocks: str | None):
    """Every child of model.<blocks> runs under activation checkpointing inside the block."""
    if blocks is None:
        yield
        return
    container = model.get_submodule(blocks)
    if not isinstance(container, nn.ModuleList):
        raise ValueError(f"checkpoint_blocks={blocks!r} is a {type(container).__name__}, not an nn.ModuleList")
    for block in container:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    try:
        yield
    finally:
        for block in container:
            del block.forward  # drops the instance attribute: the class's forward is back


def estimate_gradients(model: nn.Module, batches, loss_fn, targets: list[str], *, exclude: list[str] = (),
                       offload_to_cpu: bool = False, checkpoint_blocks: str | None = None,
                       sum_across=None) -> dict[str, torch.Tensor]:
    """{module name: fp32 (out, in) gradient} for every target nn.Linear outside the modules named in
    `exclude` (adapter.modules_to_save), averaged over every batch of the iterable `batches` (all of them are
    consumed, in order). `sum_across(tensors)` sums tensors over
    processes in place (distributed.sum_): each process then probes its share of the batches, and every one
    gets the average over all of them (FSDP has summed the sharded weights' gradients already)."""
    weights = {name: lin.weight for name, lin in find_targets(model, targets, exclude).items()}
    owners = {}
    for name, w in weights.items():
        if id(w) in owners:
            raise ValueError(f"targets {owners[id(w)]} and {name} share one weight (tied): probe only one of them")
        owners[id(w)] = name
    sharded = {name for name, w in weights.items() if isinstance(w, DTensor)}
    if sharded and offload_to_cpu:
        raise ValueError("offload_to_cpu: the weights are sharded (FSDP), and so are their accumulators already")
    acc = {name: torch.zeros_like(w, dtype=torch.float32) if name in sharded else
           torch.zeros(w.shape, dtype=torch.float32, device="cpu" if offload_to_cpu else w.device)
           for name, w in weights.items()}

    def accumulate(total: torch.Tensor):
        def hook(p: torch.Tensor):
            total.add_(p.grad.to(total.device, torch.float32))
            p.grad = None
        return hook

    requires = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    handles = []
    n_batches, weight_sum = 0, 0.0
    try:
        for p, _ in requires:
            p.requires_grad_(False)
        for name, w in weights.items():
            w.requires_grad_(True)
            w.grad = None
            if name not in sharded:
                handles.append(w.register_post_accumulate_grad_hook(accumulate(acc[name])))
        model.train()
        with _checkpointed(model, checkpoint_blocks):
            for batch in batches:
                out = loss_fn(model, batch)
                loss, weight = out if isinstance(out, tuple) else (out, 1.0)
                weight = float(weight)
                if not torch.isfinite(loss):
                    raise ValueError(f"probe batch {n_batches}: the loss is {loss.item()}")
                (loss * weight).backward()
                for name in sharded:
                    if weights[name].grad is not None:
                        accumulate(acc[name])(weights[name])
                n_batches, weight_sum = n_batches + 1, weight_sum + weight
    finally:
        for h in handles:
            h.remove()
        for p, flag in requires:
            p.requires_grad_(flag)
        model.train(was_training)
    if sum_across is not None:
        counts = torch.tensor([n_batches, weight_sum], dtype=torch.float64, device=next(iter(acc.values())).device)
        sum_across([*(a for name, a in acc.items() if name not in sharded), counts])
        n_batches, weight_sum = int(counts[0]), float(counts[1])
    if n_batches == 0 or weight_sum <= 0:
        raise ValueError(f"the probe saw {n_batches} batches with total weight {weight_sum}: it needs at least one")
    for a in acc.values():
        a.div_(weight_sum)
    return acc
