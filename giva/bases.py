"""GiVA's frozen bases from the SVD of the first-step gradient G = dL/dW0 (methods.md 2.3).

    (U, S, V) = svd_lowrank(G, q = min(4 r', m, n), niter = 4)      G: (m, n) fp32
    A = V[:, :r']^T                                  (r', n)  top-r' right singular vectors, for every init
    B = U[:, :r'] (topsv) | U[:, r':2r'] (secsv) | Q of QR(randn(m, r')) (rand)          (m, r')

svd_lowrank and Rand-B's Gaussian draw from the global RNG. We run them inside a forked RNG seeded
from (seed, module name), so a layer's bases depend only on its gradient, the seed and its name: never
on the global RNG state or on the order the layers are processed in. Deliberate difference: the official
code uses the global RNG as it happens to be, so its bases depend on layer order (methods.md 9.7).
"""
import zlib
from contextlib import contextmanager

import torch


def effective_rank(r: int, m: int, n: int, init: str) -> int:
    """The official per-layer cap: SecSV-B needs 2r' singular vectors, the others r'."""
    return min(r, min(m, n) // 2) if init == "secsv" else min(r, m, n)


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


@torch.no_grad()
def giva_bases(G: torch.Tensor, r: int, init: str, *, seed: int, q: int | None = None,
               niter: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, n) and B (m, r) for an already capped rank r (see effective_rank), in fp32 on G's device."""
    G = G.float()
    m, n = G.shape
    need = 2 * r if init == "secsv" else r
    q = min(4 * r if q is None else q, m, n)
    if q < need:
        raise ValueError(f"svd q={q} is smaller than the {need} singular vectors init={init!r} needs at r={r} "
                         f"for a ({m}, {n}) gradient")
    with seeded_rng(seed, G.device), exact_fp32():
        U, _, V = torch.svd_lowrank(G, q=q, niter=niter)  # (m, q), (q,), (n, q)
        A = V[:, :r].T.contiguous()  # (r, n)
        if init == "topsv":
            B = U[:, :r]
        elif init == "secsv":
            B = U[:, r:2 * r]
        elif init == "rand":
            B, _ = torch.linalg.qr(torch.randn(m, r, device=G.device))  # reduced QR: (m, r)
        else:
            raise ValueError(f"unknown GiVA init {init!r}")
    return A, B.contiguous()
