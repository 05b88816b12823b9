"""Several processes through torch.distributed: `torchrun --nproc_per_node N -- train.py CONFIG` (or eval.py;
the `--` keeps torchrun from reading the script's options, eval.py's --run, as abbreviations of its own).

Data parallel, the simplest kind that fits adapters: every rank holds the whole model, runs its share of each
optimizer batch's micro-batches, and the gradients of the few trainable tensors are summed across ranks with
one all-reduce of a flat buffer before the step, so every rank takes the same AdamW step. Rank 0 alone writes
the run directory. NCCL on CUDA (one GPU per rank, cuda:LOCAL_RANK), gloo on the CPU. Without torchrun nothing
is initialised and every function here is a no-op; torchrun with one process joins a group of one (so that
train.parallel=fsdp runs FSDP2 on one device too), where the collectives here are no-ops as well.

FSDP2 (`train.parallel: fsdp`), for a model that does not fit one device: `shard` hands the model to PyTorch's
`fully_shard`, block by block, so each rank keeps 1/N of every parameter (frozen base weights and trained
tensors alike, as DTensors), all-gathers a block's just before it runs and frees them after; the gradients of
the trained tensors are reduce-scattered (summed). Every rank must then run the same number of forwards:
`share_even` pads a rank's share with forwards of zero weight. `gather_full` and `place_like` move
tensors between that sharded form and the whole tensors the run directory holds.
"""
import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from experiment import ConfigError


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def joined() -> bool:
    """Whether this process is one of a torchrun group (of one, or more)."""
    return dist.is_initialized()


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (it sets WORLD_SIZE) and return this rank's device."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun rank {local} on this host has no GPU of its own ({torch.cuda.device_count()} "
                              f"visible): --nproc_per_node at most that, or train.device=cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda"
                            else None)
    return device


def share(items: list) -> list:
    """This rank's items of `items`: every world()-th one from rank()."""
    return items[rank()::world()]


def share_even(items: list) -> list[tuple[object, int]]:
    """(item, 1) for each of this rank's share of `items`, then (items[0], 0) until every rank has as many
    (none with one process): a forward of zero weight, so that every rank runs as many forwards, which FSDP's
    collectives need and which costs a data-parallel rank no wall time (it would wait for the others anyway)."""
    longest = -(-len(items) // world())
    mine = share(items)
    return [(item, 1) for item in mine] + [(items[0], 0)] * (longest - len(mine))


def sum_(tensors: list[torch.Tensor]):
    """Sum each tensor across ranks, in place, through one flat buffer per dtype (one collective each)."""
    if world() == 1:
        return
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(part.view_as(t))


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (pickled: for small or CPU objects)."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 over every rank: each block (a child of the model's outermost nn.ModuleLists) is one unit, the rest
    of the model (embeddings, final norm, head) the root's. Gradients are summed, not averaged: train.py divides
    them by the optimizer batch's target count as it does with one process. `loss` and `forward_hidden` run
    under the root's hooks as `forward` does."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
    mesh = init_device_mesh(device.type, (world(),))
    lists = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and not any(name.startswith(o + ".") for o in lists):
            lists[name] = m
    for blocks in lists.values():
        for block in blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for method in ("loss", "forward_hidden"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def gather_full(tensors: dict) -> dict | None:
    """{name: whole tensor on the CPU} on rank 0, None on the others. A sharded (DTensor) value is all-gathered
    (every rank must call this with the same names, in the same order), one tensor at a time."""
    out = {}
    for name, t in tensors.items():
        whole = t.full_tensor() if is_sharded(t) else t
        if is_main():
            out[name] = whole.detach().cpu()
        del whole
    return out if is_main() else None


def place_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor (every rank holds the same one) laid out as `like`: this rank's shard if `like` is sharded,
    else on like's device."""
    if is_sharded(like):
        return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return value.to(like.device)


def on_main(fn):
    """fn() on rank 0; its result, or its error, on every rank (an error on rank 0 is raised everywhere
    instead of leaving the others waiting at the next collective)."""
    if world() == 1:
        return fn()
    result = error = None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    result, error = gather_objects((result, error))[0]
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (writing any cache or file it creates), then the others (reading them)."""
    if world() > 1 and not is_main():
        dist.barrier()
    yield
    if world() > 1 and is_main():
        dist.barrier()


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
