"""Write a tiny random model in a publisher's checkpoint layout, for tests and smoke runs.

    write_random_checkpoint("/tmp/tiny", family="qwen2", n_layers=2)
    model = load_model("/tmp/tiny"); tok = load_tokenizer("/tmp/tiny")
    write_random_checkpoint("/tmp/vit", family="dinov2", image_size=32)   # a ViT (models/vit_families.py)

The weights go through the family's key table inverted (models/checkpoint.py export_state), so the files
are what the publisher would ship: config.json, model.safetensors, and for a decoder generation_config.json
and a tiny byte-level BPE tokenizer (vocab.json: the 256 GPT-2 byte characters as ids 0..255, then <s>,
</s>, <pad>; merges.txt with no merges; tokenizer_config.json); for a ViT the image processor's
preprocessor_config.json (the family's mean and std, resize and crop to the config's image_size).
"""
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoint import export_state, load_config
from .decoder import DecoderConfig
from .families import DECODER_FAMILIES
from .vit import ViTConfig
from .vit_families import VIT_FAMILIES
from data.image_transforms import BICUBIC, CLIP, DINOV2
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
VIT_TINY = dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, image_size=32, patch_size=8)
VIT_DEFAULTS = {  # family -> (ViTConfig fields, image processor: mean/std and class name)
    "dinov2": (dict(layout="dinov2", norm_eps=1e-6, act="gelu"), DINOV2, "BitImageProcessor"),
    "clip_vision_model": (dict(layout="clip", norm_eps=1e-5, act="quick_gelu"), CLIP, "CLIPImageProcessor"),
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


def tiny_config(family="llama", **overrides) -> DecoderConfig | ViTConfig:
    """The tiny DecoderConfig (or ViTConfig) write_random_checkpoint uses; `overrides` are its field names."""
    if family in VIT_DEFAULTS:
        kind, base = ViTConfig, {**VIT_TINY, **VIT_DEFAULTS[family][0]}
    elif family in FAMILY_DEFAULTS:
        kind, base = DecoderConfig, {**TINY, **FAMILY_DEFAULTS[family]}
    else:
        raise ValueError(f"unknown family {family!r} (choose from {', '.join([*FAMILY_DEFAULTS, *VIT_DEFAULTS])})")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} field(s) {unknown} (valid: {', '.join(sorted(names))})")
    return kind(**{**base, **overrides})


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


def write_preprocessor_config(path, family: str, image_size: int):
    """The image processor file of a tiny ViT: its family's mean and std, resize and center crop to image_size."""
    _, prep, processor = VIT_DEFAULTS[family]
    _write_json(Path(path) / "preprocessor_config.json", {
        "image_processor_type": processor, "do_resize": True, "size": {"shortest_edge": image_size},
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size}, "resample": BICUBIC,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(prep.mean),
        "image_std": list(prep.std), "do_convert_rgb": True})


def write_random_checkpoint(path, family="llama", seed=0, dtype=torch.float32, device="cpu",
                            **config_overrides) -> Path:
    """A tiny random `family` model in the publisher layout at `path`; `config_overrides` are DecoderConfig
    (or, for a ViT family, ViTConfig) fields (e.g. n_layers=1). Weights ~ N(0, 0.02); scales (norm weights,
    DINOv2's layer scale: the 1-D non-bias tensors) 1 + N(0, 0.1) and biases N(0, 0.02), so no tensor is
    trivially the identity. `device="cuda"` draws the weights there (a 7B-shaped model in seconds instead
    of minutes; other random numbers than on the CPU).

    The files appear whole or not at all: they are written into a temporary folder beside `path`, then moved
    in with config.json last, so a run killed during first use leaves either no config.json (the next run
    writes the checkpoint again) or a complete checkpoint."""
    final = Path(path)
    final.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        _write_checkpoint(path, family, seed, dtype, device, config_overrides)
        for file in sorted(path.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
            os.replace(file, final / file.name)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _write_checkpoint(path: Path, family, seed, dtype, device, config_overrides):
    cfg = tiny_config(family, **config_overrides)
    vit = family in VIT_DEFAULTS
    fam = VIT_FAMILIES[family] if vit else DECODER_FAMILIES[family]
    raw = fam.from_config(cfg)
    raw.update(torch_dtype=str(dtype).split(".")[-1])
    if not vit:
        raw.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        n_tokens = len(bytes_to_unicode()) + len(SPECIAL_TOKENS)
        if cfg.vocab_size < n_tokens:
            raise ValueError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {n_tokens} tokens")
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device(device):
        model = fam.build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.endswith("bias"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, device=device))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=device))
    _write_json(path / "config.json", raw)
    if load_config(path) != cfg:
        raise ValueError(f"family {family!r} cannot express this config in config.json: {config_overrides}")
    save_safetensors(path / "model.safetensors", {k: v.to(dtype) for k, v in export_state(model, fam.keys).items()},
                     metadata={"format": "pt"})
    if vit:
        write_preprocessor_config(path, family, cfg.image_size)
        return
    _write_json(path / "generation_config.json",
                {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID})
    write_tokenizer(path)
