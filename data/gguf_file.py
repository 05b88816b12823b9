"""Our own reader of the GGUF format (llama.cpp, Ollama): header, metadata key/values, tensor infos, data.

It lives in data/ because both the model loader (models/gguf.py: weights and config) and the tokenizer
(data/gguf_tokenizer.py: `tokenizer.ggml.*`) read it, and data/ imports neither models/ nor giva/.

The format (little-endian, GGUF version 2 or 3):
    "GGUF"  u32 version  u64 n_tensors  u64 n_kv
    n_kv x  (string key, u32 value type, value)          string = u64 length + UTF-8 bytes;
                                                          array = u32 item type, u64 count, items
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
    padding to `general.alignment` (default 32), then the data section; offsets count from its start.
dims[0] is the fastest-varying (a row's length), so the torch shape is the dims reversed. A tensor of a
block-quantised type holds prod(shape) / block_elems blocks of block_bytes each, rows whole blocks.

Opening checks every tensor against the file: a known type, rows that are whole blocks, aligned offsets,
no two tensors overlapping and every byte inside the file. Every error is a ValueError naming the file
and, where there is one, the key or tensor. The data is memory-mapped (copy-on-write): a tensor's bytes
cost no RAM until read.
"""
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml type id -> (name, elements per block, bytes per block): the types this project reads.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144), 14: ("Q6_K", 256, 210),
}

# metadata value type -> (struct format, numpy dtype) for the fixed-size scalars
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9


def is_gguf(path) -> bool:
    """Whether checkpoint `path` is a GGUF file (by its name, as llama.cpp and Ollama name them)."""
    return Path(path).suffix == ".gguf"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str   # "Q4_1", "F32", ...
    shape: tuple     # torch order (dims reversed)
    offset: int      # from the start of the data section
    nbytes: int


class _Cursor:
    """Reads the header of `path` from `buf`; running past its end is a 'truncated' error naming `where`."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, where: str):
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file (ends inside {where})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, kind: int, where: str):
        fmt = _SCALARS[kind][0]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), where))[0]

    def string(self, where: str) -> str:
        n = self.scalar(10, where)
        try:
            return bytes(self.take(n, where)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: {where} is not UTF-8 ({e})") from None

    def value(self, kind: int, where: str):
        if kind in _SCALARS:
            return self.scalar(kind, where)
        if kind == _STRING:
            return self.string(where)
        if kind == _ARRAY:
            item, count = self.scalar(4, where), self.scalar(10, where)
            if item in _SCALARS:  # a numeric array in one read
                dtype = np.dtype(_SCALARS[item][1])
                return np.frombuffer(self.take(count * dtype.itemsize, where), dtype=dtype).tolist()
            return [self.value(item, f"{where}[{i}]") for i in range(count)]
        raise ValueError(f"{self.path}: {where} has unknown value type {kind}")


class GGUFFile:
    """A memory-mapped GGUF file: `metadata` (dict), `tensors` ({name: TensorInfo}), `raw(name)` (uint8 bytes)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: GGUF file not found")
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if self.path.stat().st_size else b""
        cur = _Cursor(memoryview(self._mmap), self.path)
        if bytes(cur.take(4, "the magic")) != MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file (no 'GGUF' magic)")
        version = cur.scalar(4, "the header")
        if version not in (2, 3):
            raise ValueError(f"{self.path}: unsupported GGUF version {version} (2 or 3)")
        n_tensors, n_kv = cur.scalar(10, "the header"), cur.scalar(10, "the header")
        self.metadata = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            self.metadata[key] = cur.value(cur.scalar(4, f"metadata '{key}'"), f"metadata '{key}'")
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"{self.path}: metadata 'general.alignment' = {alignment!r} is not a positive integer")
        self._data_start = -(-cur.pos // alignment) * alignment
        self.tensors = {}
        for t in infos:
            if t.name in self.tensors:
                raise ValueError(f"{self.path}: tensor '{t.name}' appears twice")
            if t.offset % alignment:
                raise ValueError(f"{self.path}: tensor '{t.name}' at offset {t.offset} is not {alignment}-byte aligned")
            self.tensors[t.name] = t
        self._check_layout(len(self._mmap) - self._data_start)

    def _tensor_info(self, cur: _Cursor) -> TensorInfo:
        name = cur.string("a tensor name")
        where = f"tensor '{name}'"
        dims = [cur.scalar(10, where) for _ in range(cur.scalar(4, where))]
        type_id, offset = cur.scalar(4, where), cur.scalar(10, where)
        if type_id not in GGML_TYPES:
            raise ValueError(f"{self.path}: {where} has ggml type {type_id}, which is not supported "
                             f"({', '.join(n for n, _, _ in GGML_TYPES.values())})")
        type_name, block, block_bytes = GGML_TYPES[type_id]
        if not dims or dims[0] % block:
            raise ValueError(f"{self.path}: {where} of shape {tuple(reversed(dims))} does not hold whole {type_name} "
                             f"blocks of {block} (rows of {dims[0] if dims else 0})")
        return TensorInfo(name, type_name, tuple(reversed(dims)), offset, int(np.prod(dims)) // block * block_bytes)

    def _check_layout(self, data_size: int):
        """Sorted by offset, each tensor's bytes (from its shape and type) end before the next one starts
        and inside the file: a shape that does not match its byte count overlaps or runs past the end."""
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for t, nxt in zip(ordered, ordered[1:] + [None]):
            end = t.offset + t.nbytes
            if nxt is not None and end > nxt.offset:
                raise ValueError(f"{self.path}: tensor '{t.name}' ({t.type_name}, shape {t.shape}) needs {t.nbytes} "
                                 f"bytes but '{nxt.name}' starts {nxt.offset - t.offset} bytes after it")
            if end > data_size:
                raise ValueError(f"{self.path}: truncated GGUF file: tensor '{t.name}' ({t.type_name}, shape "
                                 f"{t.shape}) needs bytes up to {end} of a {max(data_size, 0)}-byte data section")

    def field(self, key: str, kind=None, default=None, required=False):
        """Metadata `key` (checked to be an instance of `kind`), `default` when absent, an error if required."""
        if key not in self.metadata:
            if required:
                raise ValueError(f"{self.path}: missing metadata key '{key}'")
            return default
        value = self.metadata[key]
        if kind is not None and not isinstance(value, kind):
            raise ValueError(f"{self.path}: metadata '{key}' = {str(value)[:80]!r} is not a {kind}")
        return value

    def raw(self, name: str) -> torch.Tensor:
        """The bytes of tensor `name` as a uint8 view of the memory map (nbytes,)."""
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor '{name}'")
        t = self.tensors[name]
        return torch.frombuffer(self._mmap, dtype=torch.uint8, count=t.nbytes, offset=self._data_start + t.offset)
