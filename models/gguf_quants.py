"""Dequantisation of GGUF tensor data (ggml's block formats) to a float tensor, vectorised over all blocks.

Each block format stores `block_elems` weights in `block_bytes` (data/gguf_file.GGML_TYPES); the layouts
follow ggml-common.h. All arithmetic is float32, in the order ggml's reference dequantisers use, so the
values are bit-identical to llama.cpp's (and to the `gguf` package's, which the tests compare against):

    Q8_0  (34 B / 32):   f16 d, 32 x int8 q                      w = q * d
    Q4_0  (18 B / 32):   f16 d, 16 B of nibbles                  w = (q - 8) * d
    Q4_1  (20 B / 32):   f16 d, f16 m, 16 B of nibbles           w = q * d + m
          (byte j holds weight j in its low nibble and weight j + 16 in its high one)
    Q4_K  (144 B / 256): f16 d, f16 dmin, 12 B of 6-bit scales and mins for 8 sub-blocks of 32, 128 B nibbles
                                                                 w = (d * sc) * q - (dmin * mn)
    Q6_K  (210 B / 256): 128 B low nibbles, 64 B high 2-bit pairs, 16 x int8 scales (sub-blocks of 16), f16 d
                                                                 w = (d * sc) * (q - 32)
"""
import torch

from data.gguf_file import GGML_TYPES

_BY_NAME = {name: (block, nbytes) for name, block, nbytes in GGML_TYPES.values()}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian bytes -> (n, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """(n, k, group) bytes -> (n, k, 2, group): the low nibbles of a group first, then its high ones."""
    shifts = torch.tensor([0, 4], dtype=torch.uint8).view(1, 1, 2, 1)
    return (qs.unsqueeze(2) >> shifts) & 0x0F


def _q8_0(blocks):  # (n, 34) -> (n, 32)
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks[:, :2])


def _q4_0(blocks):  # (n, 18) -> (n, 32)
    q = _nibbles(blocks[:, 2:].reshape(-1, 1, 16), 16).reshape(-1, 32).to(torch.int8) - 8
    return _f16(blocks[:, :2]) * q.float()


def _q4_1(blocks):  # (n, 20) -> (n, 32)
    q = _nibbles(blocks[:, 4:].reshape(-1, 1, 16), 16).reshape(-1, 32).float()
    return _f16(blocks[:, :2]) * q + _f16(blocks[:, 2:4])


def _k_scales(scales):
    """(n, 12) packed bytes -> (scale, min) 6-bit values, each (n, 8) (ggml's get_scale_min_k4)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(blocks):  # (n, 144) -> (n, 256)
    n = blocks.shape[0]
    sc, mn = _k_scales(blocks[:, 4:16])
    d = (_f16(blocks[:, :2]) * sc.float()).view(n, 8, 1)
    dm = (_f16(blocks[:, 2:4]) * mn.float()).view(n, 8, 1)
    q = _nibbles(blocks[:, 16:].reshape(n, 4, 32), 32).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, 256)


def _q6_k(blocks):  # (n, 210) -> (n, 256)
    n = blocks.shape[0]
    d = (_f16(blocks[:, 208:]) * blocks[:, 192:208].contiguous().view(torch.int8).float()).view(n, 16, 1)
    ql = _nibbles(blocks[:, :128].reshape(n, 2, 64), 64).reshape(n, 8, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    qh = ((blocks[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 0x03).reshape(n, 8, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, 16, 16).float()).reshape(n, 256)


_BLOCK_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k, "Q6_K": _q6_k}
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def dequantize(raw: torch.Tensor, type_name: str, shape: tuple, dtype=torch.float32) -> torch.Tensor:
    """The tensor of `shape` stored as `raw` ((nbytes,) uint8) in ggml type `type_name`, as `dtype`."""
    if type_name in _PLAIN:
        values = raw.view(_PLAIN[type_name])
    elif type_name in _BLOCK_DEQUANT:
        values = _BLOCK_DEQUANT[type_name](raw.view(-1, _BY_NAME[type_name][1]))
    else:
        raise ValueError(f"ggml type {type_name!r} cannot be dequantised ({', '.join(_PLAIN)}, {', '.join(_BLOCK_DEQUANT)})")
    return values.reshape(shape).to(dtype, copy=True)
