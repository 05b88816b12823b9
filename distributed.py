"""Several processes through torch.distributed: `torchrun --nproc_per_node N -- train.py CONFIG` (or eval.py;
the `--` keeps torchrun from reading the script's options, eval.py's --run, as abbreviations of its own).

Data parallel, the simplest kind that fits adapters: every rank holds the whole model, runs its share of each
optimizer batch's micro-batches, and the gradients of the few trainable tensors are summed across ranks with
one all-reduce of a flat buffer before the step, so every rank takes the same AdamW step. Rank 0 alone writes
the run directory. NCCL on CUDA (one GPU per rank, cuda:LOCAL_RANK), gloo on the CPU. With one process
(no torchrun, or WORLD_SIZE=1) every function here is a no-op and nothing is initialised.
"""
import contextlib
import os

import torch
import torch.distributed as dist

from experiment import ConfigError


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1) and return this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
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
