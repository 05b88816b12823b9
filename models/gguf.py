"""A GGUF file (llama.cpp, Ollama) as a checkpoint: its config as config.json fields, its tensors under HF keys.

    general.architecture, {arch}.*   -> the config.json dict that family's converter reads (models/families.py),
                                        so GGUF and safetensors checkpoints share one converter
    blk.N.attn_q.weight, ...         -> model.layers.N.self_attn.q_proj.weight, ... (the family's checkpoint
                                        keys), dequantised on read (models/gguf_quants.py)

llama.cpp's converter permutes the rows of q and k of Llama-architecture models (its rotary embedding pairs
adjacent dims, HF's pairs dim i with dim i + head_dim/2); reading undoes that. Qwen2 files are not permuted.
Tensors are read one at a time through models/checkpoint.fill_model, the one filling routine.
"""
import torch

from data.gguf_file import GGUFFile
from .gguf_quants import dequantize

# ggml name (layer part) -> HF checkpoint key (layer part); the families' key tables take it from there.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
ARCHITECTURES = {"llama", "qwen2"}  # general.architecture values whose metadata we convert
_PERMUTED = {"llama"}  # architectures whose q/k rows llama.cpp permuted


def gguf_config_json(f: GGUFFile) -> dict:
    """The config.json fields of the family named by `general.architecture`, from the `{arch}.*` metadata."""
    arch = f.field("general.architecture", str, required=True)
    if arch not in ARCHITECTURES:
        raise ValueError(f"{f.path}: general.architecture {arch!r} is not supported ({', '.join(sorted(ARCHITECTURES))})")
    if "rope_freqs.weight" in f.tensors:
        raise ValueError(f"{f.path}: tensor 'rope_freqs.weight' (per-dimension rope scaling) is not supported")
    scaling = f.field(f"{arch}.rope.scaling.type", str, default="none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"{f.path}: metadata '{arch}.rope.scaling.type' = {scaling!r} is not supported (none, linear)")

    def get(key, default=None, required=False):
        return f.field(f"{arch}.{key}", (int, float), default=default, required=required)

    n_heads, dim = get("attention.head_count", required=True), get("embedding_length", required=True)
    head_dim = get("attention.key_length", default=dim // n_heads)
    vocab = get("vocab_size", default=f.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in f.tensors else None)
    raw = {
        "model_type": arch, "hidden_act": "silu", "vocab_size": vocab, "hidden_size": dim,
        "intermediate_size": get("feed_forward_length", required=True),
        "num_hidden_layers": get("block_count", required=True), "num_attention_heads": n_heads,
        "num_key_value_heads": get("attention.head_count_kv", default=n_heads), "head_dim": head_dim,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", required=True),
        "rope_theta": get("rope.freq_base", default=10000.0),
        "partial_rotary_factor": get("rope.dimension_count", default=head_dim) / head_dim,
        "max_position_embeddings": get("context_length", default=4096),
        "tie_word_embeddings": "output.weight" not in f.tensors,
    }
    if scaling == "linear":
        raw["rope_scaling"] = {"rope_type": "linear", "factor": get("rope.scaling.factor", required=True)}
    return raw


def hf_key(name: str, file) -> str:
    """The HF checkpoint key of ggml tensor `name`; an unknown name is an error naming it."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ValueError(f"{file}: unexpected tensor '{name}' (no HF key for this GGUF tensor name)")


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's permute(): per head, rows (half, pair) -> (pair, half). (out, ...) -> same."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(f: GGUFFile) -> dict:
    """{HF checkpoint key: (shape, read)}: read() dequantises the tensor to float32 (q/k rows unpermuted)."""
    raw = gguf_config_json(f)
    heads = {"attn_q": raw["num_attention_heads"], "attn_k": raw["num_key_value_heads"]}
    permuted = raw["model_type"] in _PERMUTED
    out = {}
    for name, info in f.tensors.items():
        n_heads = heads.get(name.split(".")[2]) if permuted and name.startswith("blk.") else None

        def read(info=info, n_heads=n_heads):
            w = dequantize(f.raw(info.name), info.type_name, info.shape)
            return w if n_heads is None else _unpermute(w, n_heads)
        out[hf_key(name, f.path)] = (info.shape, read)
    return out
