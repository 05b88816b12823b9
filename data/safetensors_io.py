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
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the limit of the reference (Rust) reader
USIZE_MAX = 2**64 - 1  # offsets and dims are u64 in the reference reader
ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


def replace_durably(src, dst):
    """Rename the finished (fsynced) file `src` over `dst` and fsync the folder, so the rename survives a crash."""
    os.replace(src, dst)
    dir_fd = os.open(Path(dst).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        replace_durably(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unique_keys(pairs):
    """json object_pairs_hook: a JSON object as a dict, refusing a key given twice (the spec forbids it)."""
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def _is_uint(x) -> bool:
    return type(x) is int and 0 <= x <= USIZE_MAX  # type(): JSON true/false are bools, not ints


class SafetensorsFile:
    """A lazily read, memory-mapped safetensors file: `keys()`, `metadata`, `shape(k)`, `get(k)`.

    Opening checks the whole header against the format's specification and the reference reader
    (safetensors/src/tensor.rs, `read_metadata` and `Metadata::validate`): the header is a JSON object that
    begins with '{', is padded only with spaces and has no duplicate key; `__metadata__` maps str to str;
    each entry has dtype (known), shape (non-negative ints) and data_offsets ([begin, end] ints)
    with end - begin = prod(shape) * itemsize; sorted by offsets, the entries tile the data section from
    byte 0 to its last byte without gap or overlap (so no two tensors share bytes and no byte is unused).
    """

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
        header = self._parse_header(raw)
        self.metadata = self._check_metadata(header.pop("__metadata__", {}))
        for key, e in header.items():
            self._check_entry(key, e)
        self._check_layout(header, size - 8 - n)
        self._data_start = 8 + n
        self._entries = header
        self._mmap = None

    def _parse_header(self, raw: bytes) -> dict:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: corrupt header, not UTF-8 ({e})") from None
        if not text.startswith("{"):
            raise ValueError(f"{self.path}: corrupt header, it must begin with '{{' (starts with {text[:8]!r})")
        try:
            header, end = json.JSONDecoder(object_pairs_hook=_unique_keys).raw_decode(text)
        except ValueError as e:  # JSONDecodeError or a duplicate key
            raise ValueError(f"{self.path}: corrupt header, not valid JSON ({e})") from None
        if text[end:].strip(" "):
            raise ValueError(f"{self.path}: corrupt header, {text[end:][:16]!r} after the JSON object "
                             f"(only space padding is allowed)")
        return header

    def _check_metadata(self, meta) -> dict:
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError(f"{self.path}: corrupt header, __metadata__ must map strings to strings: {meta!r}")
        return meta

    def _check_entry(self, key, e):
        where = f"{self.path}: corrupt header entry for tensor '{key}'"
        if not isinstance(e, dict) or not ENTRY_FIELDS <= set(e):  # other fields are ignored, as the reference does
            raise ValueError(f"{where}: expected an object with the fields {sorted(ENTRY_FIELDS)}: {e!r}")
        if not isinstance(e["dtype"], str) or e["dtype"] not in DTYPES:
            raise ValueError(f"{where}: unknown dtype {e['dtype']!r} (known: {sorted(DTYPES)})")
        shape, offsets = e["shape"], e["data_offsets"]
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
            raise ValueError(f"{where}: data_offsets must be [begin, end], two non-negative integers, got {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
            if numel > USIZE_MAX:
                raise ValueError(f"{where}: shape {shape} overflows 64 bits")
        nbytes = numel * torch.empty((), dtype=DTYPES[e["dtype"]]).element_size()
        begin, end = offsets
        if end < begin or end - begin != nbytes:
            raise ValueError(f"{self.path}: tensor '{key}' has data_offsets {offsets} ({end - begin} bytes) but "
                             f"shape {shape} {e['dtype']} needs {nbytes}")

    def _check_layout(self, entries: dict, data_size: int):
        """Sorted by offsets, the tensors must cover [0, data_size) exactly: no gap, no overlap, no slack."""
        expected, previous = 0, None
        for key, e in sorted(entries.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
            begin, end = e["data_offsets"]
            if begin != expected:
                what = "overlaps" if begin < expected else f"leaves a gap of {begin - expected} bytes after"
                after = f"tensor '{previous}'" if previous is not None else "the start of the data section"
                raise ValueError(f"{self.path}: tensor '{key}' (data_offsets {[begin, end]}) {what} {after}, "
                                 f"which ends at byte {expected}: data_offsets must tile the data section")
            if end > data_size:
                raise ValueError(f"{self.path}: truncated file: tensor '{key}' ends at byte {end} "
                                 f"but the data section has {data_size}")
            expected, previous = end, key
        if expected != data_size:
            raise ValueError(f"{self.path}: {data_size - expected} trailing bytes after the last tensor "
                             f"(the tensors end at byte {expected} of a {data_size}-byte data section)")

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
