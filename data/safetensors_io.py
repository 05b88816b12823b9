"""Our own reader and writer for the safetensors format, plus atomic file writes.

It lives in data/ because checkpoints (models/), adapter files (giva/) and token caches (data/) all use
it, and data/ imports neither of the other two.

The format: an 8-byte little-endian header length N, N bytes of JSON
    {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
     "__metadata__": {"<str>": "<str>"}}
then the raw little-endian tensor bytes, offsets counted from the end of the header.

Reading memory-maps the file (copy-on-write), so a tensor costs no RAM until it is touched
and loading a checkpoint never holds two copies of it. Every malformed input is a ValueError
that names the file and, where there is one, the tensor key.
"""
import json
import mmap
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@contextmanager
def atomic_file(path, mode="wb"):
    """Write `path` all-or-nothing: a temporary file in the same folder, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SafetensorsFile:
    """A lazily read, memory-mapped safetensors file: `keys()`, `metadata`, `shape(k)`, `get(k)`."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: safetensors file not found") from None
        if size < 8:
            raise ValueError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ValueError(f"{self.path}: corrupt or truncated header (claims {n} bytes, file has {size})")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: corrupt header, not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: corrupt header, expected a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._data_size = size - self._data_start
        self._entries = header
        for key, e in header.items():
            self._check_entry(key, e)
        self._mmap = None

    def _check_entry(self, key, e):
        if not isinstance(e, dict) or e.get("dtype") not in DTYPES or "shape" not in e or "data_offsets" not in e:
            raise ValueError(f"{self.path}: corrupt header entry for tensor '{key}': {e!r}")
        begin, end = e["data_offsets"]
        numel = 1
        for d in e["shape"]:
            numel *= d
        itemsize = torch.empty((), dtype=DTYPES[e["dtype"]]).element_size()
        if end - begin != numel * itemsize or begin < 0:
            raise ValueError(f"{self.path}: tensor '{key}' has {end - begin} bytes for shape {e['shape']} {e['dtype']}")
        if end > self._data_size:
            raise ValueError(f"{self.path}: truncated file: tensor '{key}' ends at byte {end} "
                             f"but the data section has {self._data_size}")

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return tuple(self._entries[key]["shape"])

    def dtype(self, key):
        return DTYPES[self._entries[key]["dtype"]]

    def get(self, key) -> torch.Tensor:
        """The tensor `key` as a view of the memory map (no copy until written to)."""
        if key not in self._entries:
            raise KeyError(f"{self.path}: no tensor '{key}'")
        e = self._entries[key]
        begin, end = e["data_offsets"]
        dtype = DTYPES[e["dtype"]]
        if end == begin:
            return torch.empty(e["shape"], dtype=dtype)
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        flat = torch.frombuffer(self._mmap, dtype=torch.uint8, count=end - begin, offset=self._data_start + begin)
        return flat.view(dtype).reshape(e["shape"])


def load_safetensors(path) -> tuple[dict, dict]:
    """All tensors of a file (memory-mapped views) and its `__metadata__` dict."""
    f = SafetensorsFile(path)
    return {k: f.get(k) for k in f.keys()}, f.metadata


def save_safetensors(path, tensors: dict, metadata: dict | None = None):
    """Write `tensors` ({name: tensor}) atomically; `metadata` must map str to str."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{path}: value for '{name}' is {type(t).__name__}, not a tensor")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{path}: tensor '{name}' has unsupported dtype {t.dtype}")
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append(t)
        offset += nbytes
    if metadata:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"{path}: metadata values must be strings (keys {bad})")
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in blobs:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
