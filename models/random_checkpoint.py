"""Write a tiny random model in a publisher's checkpoint layout, for tests and smoke runs.

    write_random_checkpoint("/tmp/tiny", family="qwen2", n_layers=2)
    model = load_model("/tmp/tiny"); tok = load_tokenizer("/tmp/tiny")

The weights go through the family's key table inverted (models/checkpoint.py export_state), so the files
are what the publisher would ship: config.json, model.safetensors, generation_config.json, and a tiny
byte-level BPE tokenizer (vocab.json: the 256 GPT-2 byte characters as ids 0..255, then <s>, </s>, <pad>;
merges.txt with no merges; tokenizer_config.json).
"""
import dataclasses
import json
from pathlib import Path

import torch

from .checkpoint import export_state, load_config
from .decoder import DecoderConfig
from .families import DECODER_FAMILIES as FAMILIES
from data.safetensors_io import atomic_file, save_safetensors

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")  # ids 256, 257, 258
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258

TINY = dict(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
            norm_eps=1e-6, rope_theta=10000.0, max_seq_len=256)
FAMILY_DEFAULTS = {  # what makes the tiny model of each family exercise that family's flags
    "llama": {},
    "mistral": dict(sliding_window=8),
    "qwen2": dict(qkv_bias=True, tie_embeddings=True),
    "phi3": dict(sliding_window=8, fused_projections=True),
    "olmo2": dict(qk_norm=True, post_norm=True, norm_scale_in_fp32=True),
}


def bytes_to_unicode() -> dict:
    """GPT-2's map from each byte to a printable unicode character (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_config(family="llama", **overrides) -> DecoderConfig:
    """The tiny DecoderConfig write_random_checkpoint uses; `overrides` are DecoderConfig field names."""
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r} (choose from {', '.join(FAMILY_DEFAULTS)})")
    names = {f.name for f in dataclasses.fields(DecoderConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown DecoderConfig field(s) {unknown} (valid: {', '.join(sorted(names))})")
    return DecoderConfig(**{**TINY, **FAMILY_DEFAULTS[family], **overrides})


def _write_json(path: Path, obj):
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(path):
    """The tiny byte-level BPE tokenizer files (vocab.json, merges.txt, tokenizer_config.json) in `path`."""
    path = Path(path)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    added = {}
    for i, tok in enumerate(SPECIAL_TOKENS, start=len(vocab)):
        vocab[tok] = i
        added[str(i)] = {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    _write_json(path / "vocab.json", vocab)
    with atomic_file(path / "merges.txt", "w") as f:
        f.write("#version: 0.2\n")
    _write_json(path / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": None, "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000, "tokenizer_class": "GPT2Tokenizer",
    })
    return len(vocab)


def write_random_checkpoint(path, family="llama", seed=0, dtype=torch.float32, device="cpu",
                            **config_overrides) -> Path:
    """A tiny random `family` model in the publisher layout at `path`; `config_overrides` are DecoderConfig
    fields (e.g. n_layers=1). Weights ~ N(0, 0.02); norm weights 1 + N(0, 0.1) and biases N(0, 0.02), so
    no tensor is trivially the identity. `device="cuda"` draws the weights there (a 7B-shaped model in
    seconds instead of minutes; other random numbers than on the CPU)."""
    path = Path(path)
    cfg = tiny_config(family, **config_overrides)
    fam = FAMILIES[family]
    raw = fam.from_config(cfg)
    raw.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, torch_dtype=str(dtype).split(".")[-1])
    n_tokens = len(bytes_to_unicode()) + len(SPECIAL_TOKENS)
    if cfg.vocab_size < n_tokens:
        raise ValueError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {n_tokens} tokens")
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device(device):
        model = fam.build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, device=device))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=device))
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "config.json", raw)
    if load_config(path) != cfg:
        raise ValueError(f"family {family!r} cannot express this config in config.json: {config_overrides}")
    save_safetensors(path / "model.safetensors", {k: v.to(dtype) for k, v in export_state(model, fam.keys).items()},
                     metadata={"format": "pt"})
    _write_json(path / "generation_config.json",
                {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID})
    write_tokenizer(path)
    return path
