"""Seeded, exact numerics shared by the methods: per-layer seeds, fp32 at full precision, a forked RNG.

Randomised steps (GiVA's svd_lowrank and Rand-B, LoRA's init) run inside a forked RNG seeded from (seed,
module name), so a layer's result depends only on its inputs, the seed and its name: never on the global RNG
state or on the order the layers are processed in. Deliberate difference: the official code uses the global
RNG as it happens to be, so its bases depend on layer order (methods.md 9.7).
"""
import zlib
from contextlib import contextmanager

import torch


def layer_seed(seed: int, name: str) -> int:
    """A stable per-layer seed (crc32, not Python's salted hash)."""
    return (seed * 2**32 + zlib.crc32(name.encode())) % 2**63


@contextmanager
def exact_fp32():
    """fp32 matmuls at full precision (TF32 off) inside the block; the previous setting restored after."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """The global RNG of `device` forked (restored on exit) and seeded with `seed`."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield
