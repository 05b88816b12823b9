"""Our safetensors reader against the format's specification and the reference reader.

Every header below is built by hand. The verdict each case expects comes from the specification
(README "Format" of huggingface/safetensors) and the reference reader it describes
(safetensors/src/tensor.rs: `read_metadata`, `Metadata::validate`, which sorts the entries by
data_offsets and requires them to tile the data section from byte 0 to its end). Where the `safetensors`
package is installed (a test-only oracle) it must accept exactly the files we accept and reject exactly the
files we reject, except for the few cases marked `stricter`: the specification forbids them ("MUST begin
with a `{`", "MAY be trailing padded with whitespace (0x20)", "Duplicate keys are disallowed. Not all
parsers may respect this.", `__metadata__` "string-to-string map") but the reference reader lets them by.
"""
import json
import struct
from dataclasses import dataclass

import pytest
import torch

from data.safetensors_io import MAX_HEADER_BYTES, SafetensorsFile, load_safetensors, save_safetensors


def entry(dtype, shape, offsets, **extra):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets, **extra}


@dataclass
class Case:
    name: str
    header: object  # a dict (dumped as JSON) or the header text itself
    data_bytes: int
    error: str | None = None  # None: a valid file; else a regex the ValueError must match
    key: str | None = None  # the tensor the message must name
    stricter: bool = False  # rejected by the spec, accepted by the reference reader
    length: int | None = None  # header length to claim instead of the true one


Q = entry("F32", [2, 2], [0, 16])
CASES = [
    # valid files
    Case("two tensors in order", {"a": Q, "b": entry("F32", [4], [16, 32])}, 32),
    Case("unsorted but tiling", {"b": entry("F32", [4], [16, 32]), "a": Q}, 32),
    Case("scalar", {"s": entry("F64", [], [0, 8])}, 8),
    Case("empty tensors anywhere", {"e": entry("F32", [0, 3], [0, 0]), "a": entry("I8", [3], [0, 3]),
                                    "f": entry("BF16", [2, 0], [3, 3])}, 3),
    Case("no tensors", {}, 0),
    Case("metadata", {"__metadata__": {"format": "pt", "k": ""}, "a": Q}, 16),
    Case("space padding", json.dumps({"a": Q}) + "    ", 16),
    Case("other dtypes", {"b": entry("BOOL", [3], [0, 3]), "u": entry("U16", [2], [3, 7]),
                          "h": entry("F16", [1], [7, 9])}, 9),
    Case("extra entry field (ignored)", {"a": entry("F32", [2, 2], [0, 16], note="x")}, 16),
    # overlaps, gaps and slack
    Case("layer 1 q_proj aliasing layer 0's bytes",
         {"model.layers.0.self_attn.q_proj.weight": Q, "model.layers.1.self_attn.q_proj.weight": Q}, 16,
         r"overlaps", "model.layers.1.self_attn.q_proj.weight"),
    Case("partial overlap", {"a": Q, "b": entry("F32", [4], [8, 24])}, 24, r"'b' .*overlaps tensor 'a'", "b"),
    Case("gap", {"a": Q, "b": entry("F32", [4], [20, 36])}, 36, r"leaves a gap of 4 bytes", "b"),
    Case("not starting at 0", {"a": entry("F32", [4], [4, 20])}, 20, r"gap of 4 bytes after the start", "a"),
    Case("trailing bytes", {"a": Q}, 20, r"4 trailing bytes"),
    Case("bytes but no tensors", {}, 4, r"4 trailing bytes"),
    Case("truncated data", {"a": Q}, 12, r"truncated file: tensor 'a'", "a"),
    Case("end before begin", {"a": entry("F32", [4], [16, 0])}, 16, r"data_offsets \[16, 0\]", "a"),
    # shapes
    Case("-1 dim with offsets [0, -16]", {"a": entry("F32", [-1, 4], [0, -16])}, 0, r"shape", "a"),
    Case("negative dims", {"a": entry("F32", [-2, -2], [0, 16])}, 16, r"shape", "a"),
    Case("float shape", {"a": entry("F32", [2.0, 2.0], [0, 16])}, 16, r"shape", "a"),
    Case("string shape", {"a": entry("F32", ["2", "2"], [0, 16])}, 16, r"shape", "a"),
    Case("shape not a list", {"a": entry("F32", 4, [0, 16])}, 16, r"shape", "a"),
    Case("bool dim", {"a": entry("F32", [True], [0, 4])}, 4, r"shape", "a"),
    Case("dim beyond 64 bits", {"a": entry("F32", [0, 2**64], [0, 0])}, 0, r"shape", "a"),
    Case("numel overflows 64 bits", {"a": entry("F32", [2**32, 2**32, 0], [0, 0])}, 0, r"overflows", "a"),
    Case("byte count != prod(shape) * itemsize", {"a": entry("F32", [4], [0, 12])}, 12, r"needs 16", "a"),
    # data_offsets
    Case("one-value data_offsets", {"a": entry("F32", [4], [0])}, 16, r"data_offsets", "a"),
    Case("three-value data_offsets", {"a": entry("F32", [4], [0, 16, 32])}, 32, r"data_offsets", "a"),
    Case("negative offsets", {"a": entry("F32", [4], [-16, 0])}, 16, r"data_offsets", "a"),
    Case("float offsets", {"a": entry("F32", [4], [0.0, 16.0])}, 16, r"data_offsets", "a"),
    # dtype and entry form
    Case("unknown dtype", {"a": entry("F128", [1], [0, 16])}, 16, r"unknown dtype", "a"),
    Case("dtype not a string", {"a": entry(7, [1], [0, 4])}, 4, r"unknown dtype", "a"),
    Case("missing field", {"a": {"dtype": "F32", "shape": [1]}}, 4, r"fields", "a"),
    Case("entry not an object", {"a": [0, 4]}, 4, r"fields", "a"),
    # __metadata__
    Case("metadata a list", {"__metadata__": ["a", "b"], "a": Q}, 16, r"__metadata__"),
    Case("metadata a string", {"__metadata__": "pt", "a": Q}, 16, r"__metadata__"),
    Case("metadata with an int value", {"__metadata__": {"step": 3}, "a": Q}, 16, r"__metadata__"),
    Case("metadata null", {"__metadata__": None, "a": Q}, 16, r"__metadata__", stricter=True),
    # the header itself
    Case("header a JSON array", "[1, 2]", 0, r"must begin with"),
    Case("header not JSON", "{not json}", 0, r"not valid JSON"),
    Case("header not UTF-8", b"{\xff\xfe}", 0, r"not UTF-8"),
    Case("header length beyond the file", {"a": Q}, 16, r"claims 4096 bytes", length=4096),
    Case("header length beyond the limit", {"a": Q}, 16, r"claims", length=MAX_HEADER_BYTES + 1),
    Case("duplicate tensor key", '{"a": %s, "a": %s}' % (json.dumps(Q), json.dumps(Q)), 16,
         r"duplicate key 'a'", stricter=True),
    Case("duplicate metadata key", '{"__metadata__": {"k": "1", "k": "2"}, "a": %s}' % json.dumps(Q), 16,
         r"duplicate key 'k'", stricter=True),
    Case("leading whitespace", " " + json.dumps({"a": Q}), 16, r"must begin with", stricter=True),
    Case("newline padding", json.dumps({"a": Q}) + "\n", 16, r"only space padding", stricter=True),
]


def write_case(path, case: Case):
    raw = case.header if isinstance(case.header, bytes) else (
        case.header if isinstance(case.header, str) else json.dumps(case.header)).encode()
    length = len(raw) if case.length is None else case.length
    path.write_bytes(struct.pack("<Q", length) + raw + bytes(range(256)) * (case.data_bytes // 256)
                     + bytes(case.data_bytes % 256))
    return path


def read_all(path):
    f = SafetensorsFile(path)
    return {k: f.get(k).clone() for k in f.keys()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_matches_the_spec(tmp_path, case):
    path = write_case(tmp_path / "w.safetensors", case)
    if case.error is None:
        tensors = read_all(path)
        header = case.header if isinstance(case.header, dict) else json.loads(case.header)
        assert set(tensors) == set(header) - {"__metadata__"}
        for k, t in tensors.items():
            assert list(t.shape) == header[k]["shape"]
        return
    with pytest.raises(ValueError, match=case.error) as e:
        read_all(path)
    assert str(path) in str(e.value)
    if case.key is not None:
        assert f"'{case.key}'" in str(e.value)


@pytest.mark.parametrize("case", [c for c in CASES if not c.stricter], ids=[c.name for c in CASES if not c.stricter])
def test_oracle_agrees(tmp_path, case):
    safetensors = pytest.importorskip("safetensors", reason="the safetensors package is the reference reader")
    path = write_case(tmp_path / "w.safetensors", case)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            theirs = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # any refusal counts: the oracle raises its own error types
        theirs = None
    try:
        ours = read_all(path)
    except ValueError:
        ours = None
    assert (ours is None) == (theirs is None), f"we {'reject' if ours is None else 'accept'}, the oracle does not"
    if ours is not None:
        assert set(ours) == set(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k


def test_aliased_weights_are_refused_by_load_model(tmp_path):
    """Issue 15: a header pointing layer 1's q_proj at layer 0's bytes made it a silent copy through load_model."""
    from models import load_model, write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "ckpt", family="llama")
    file = ckpt / "model.safetensors"
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    q0, q1 = (f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1))
    header[q1]["data_offsets"] = header[q0]["data_offsets"]
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.[01]\.self_attn\.q_proj\.weight'"
                                         r" .*overlaps tensor 'model\.layers\.[01]\.self_attn\.q_proj\.weight'"):
        load_model(ckpt)


ROUND_TRIP = {
    "w": torch.randn(3, 5),
    "half": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2).half(),
    "ids": torch.arange(-4, 5, dtype=torch.int64).reshape(3, 3),
    "mask": torch.tensor([True, False, True]),
    "u16": torch.arange(6, dtype=torch.int32).to(torch.uint16),
    "scalar": torch.tensor(2.5, dtype=torch.float64),
    "empty": torch.zeros(0, 4),
    "bytes": torch.arange(9, dtype=torch.uint8),
}


def test_writer_round_trip(tmp_path):
    path = tmp_path / "rt.safetensors"
    save_safetensors(path, ROUND_TRIP, {"format": "pt", "note": "é"})
    tensors, meta = load_safetensors(path)
    assert meta == {"format": "pt", "note": "é"}
    assert list(tensors) == list(ROUND_TRIP)
    for k, t in ROUND_TRIP.items():
        assert tensors[k].dtype == t.dtype and torch.equal(tensors[k], t), k


def test_writer_output_valid_for_the_oracle_and_back(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is the reference reader")
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, ROUND_TRIP, {"format": "pt"})
    theirs = st_torch.load_file(str(ours))
    assert set(theirs) == set(ROUND_TRIP)
    for k, t in ROUND_TRIP.items():
        assert torch.equal(theirs[k], t), k
    written_by_them = tmp_path / "theirs.safetensors"
    st_torch.save_file(ROUND_TRIP, str(written_by_them), metadata={"format": "pt"})
    tensors, meta = load_safetensors(written_by_them)
    assert meta == {"format": "pt"}
    for k, t in ROUND_TRIP.items():
        assert torch.equal(tensors[k], t), k
