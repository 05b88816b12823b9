"""Per-family facts: how a publisher's config.json becomes a model config, and its checkpoint key table.

A family is one `Family` entry, found by config.json's `model_type` (or, without one, its `architectures`);
models/checkpoint.py holds the union of every kind's families and knows nothing of any beyond its entry:

    to_config(raw, file) -> model config       config.json dict -> config dataclass (errors name `file` and field)
    from_config(cfg)     -> dict                the inverse, for writing config.json (random_checkpoint.py)
    build(cfg)           -> nn.Module           the model class
    keys                                        checkpoint key template -> our parameter name template, where
                                                `{}` stands for a layer index; None marks a tensor known and
                                                deliberately unused. Names mirror the checkpoint's modules
                                                (Phi-3 keeps its fused qkv_proj and gate_up_proj)
    key_prefix, ignored_prefixes                a prefix task models put before every key ("bert."), stripped
                                                when present; key prefixes known and unused (pretraining heads)
    head, head_size_key, init_head              a task head that may be absent from the checkpoint: its module
                                                name, the key whose dim 0 is its label count, and how a fresh
                                                one is initialised, init_head(model, raw, dtype, device)

Decoder families share one converter; their differences are the data in `DecoderFacts`. Encoder families
are in models/encoder_families.py.
"""
from dataclasses import dataclass, field
from typing import Callable

from .decoder import Decoder, DecoderConfig


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple
    to_config: Callable
    from_config: Callable | None
    build: Callable
    keys: dict
    key_prefix: str = ""
    ignored_prefixes: tuple = ()
    head: str | None = None
    head_size_key: str | None = None
    init_head: Callable | None = None


@dataclass(frozen=True)
class DecoderFacts:
    """What distinguishes one decoder family's config.json from another's."""
    bias: str = "attention_bias"  # "attention_bias": q,k,v,o biased as config says; "qkv": q,k,v always; "none"
    sliding_window: str = "none"  # "none"; "config": `sliding_window` as given; "qwen2": use_sliding_window etc.
    qk_norm: bool = False
    post_norm: bool = False
    fused_projections: bool = False  # one qkv_proj and one gate_up_proj matrix (Phi-3)
    extra_fields: dict = field(default_factory=dict)  # written by from_config, e.g. Phi-3's dropout fields


SUPPORTED_ROPE = ("linear", "llama3")


def _field(raw, name, file, default=None, required=False):
    if name in raw and raw[name] is not None:
        return raw[name]
    if required:
        raise ValueError(f"{file}: missing required field '{name}'")
    return default


def _size(raw, name, file, default=None, required=False) -> int:
    """A config.json size field: a positive integer, or an error naming the file and key."""
    value = _field(raw, name, file, default, required)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{file}: '{name}' must be a positive integer, got {value!r}")
    return value


def check_heads(raw, file, dim_key="hidden_size", heads_key="num_attention_heads"):
    """Every size field of an encoder's or ViT's config.json present in `raw` is a positive integer, and the
    width splits evenly into heads; errors name the file and key."""
    for name in ("vocab_size", dim_key, "num_hidden_layers", heads_key, "intermediate_size",
                 "max_position_embeddings", "image_size", "patch_size", "num_channels"):
        if name in raw:
            _size(raw, name, file)
    if dim_key in raw and heads_key in raw and raw[dim_key] % raw[heads_key]:
        raise ValueError(f"{file}: '{dim_key}' ({raw[dim_key]}) is not a multiple of '{heads_key}' "
                         f"({raw[heads_key]})")


def _rope(raw, file):
    """(rope_theta, rope_scaling, partial_rotary_factor) from either config.json layout:
    transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = dict(raw.get("rope_parameters") or {})
    params.update(raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, partial
    if kind not in SUPPORTED_ROPE:
        raise ValueError(f"{file}: unsupported rope_scaling type {kind!r} (supported: None, "
                         f"{', '.join(SUPPORTED_ROPE)})")
    need = ["factor"] if kind == "linear" else ["factor", "low_freq_factor", "high_freq_factor",
                                                 "original_max_position_embeddings"]
    missing = [k for k in need if k not in params]
    if missing:
        raise ValueError(f"{file}: rope_scaling type {kind!r} lacks {missing}")
    return theta, {"type": kind, **{k: params[k] for k in need}}, partial


def decoder_config(raw: dict, file, facts: DecoderFacts) -> DecoderConfig:
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{file}: unsupported hidden_act {act!r} (the decoder's MLP is SwiGLU)")
    n_heads = _size(raw, "num_attention_heads", file, required=True)
    dim = _size(raw, "hidden_size", file, required=True)
    n_layers = _size(raw, "num_hidden_layers", file, required=True)
    n_kv_heads = _size(raw, "num_key_value_heads", file, default=n_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"{file}: 'num_attention_heads' ({n_heads}) must be a multiple of "
                         f"'num_key_value_heads' ({n_kv_heads})")
    if "head_dim" not in raw and dim % n_heads:
        raise ValueError(f"{file}: 'hidden_size' ({dim}) is not a multiple of 'num_attention_heads' ({n_heads}) "
                         f"and there is no 'head_dim'")
    theta, scaling, partial = _rope(raw, file)
    attention_bias = bool(raw.get("attention_bias", False))
    if facts.sliding_window == "config":
        window = raw.get("sliding_window")
    elif facts.sliding_window == "qwen2":
        window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
        # HF applies the window to layers >= max_window_layers; we support all layers or none.
        first = raw.get("max_window_layers", 28)
        if window is not None and first >= n_layers:
            window = None
        elif window is not None and first > 0:
            raise ValueError(f"{file}: sliding window on only some layers (max_window_layers={first} of "
                             f"{n_layers}) is not supported")
    else:
        window = None
    layer_types = set(raw.get("layer_types") or [])  # transformers 5 writes the per-layer outcome too
    if layer_types - {"full_attention", "sliding_attention"} or len(layer_types) > 1:
        raise ValueError(f"{file}: layer_types {sorted(layer_types)} are not supported (all layers must be "
                         f"'full_attention', or all 'sliding_attention')")
    if layer_types and (layer_types == {"sliding_attention"}) != (window is not None):
        raise ValueError(f"{file}: layer_types {sorted(layer_types)} contradict sliding_window={window}")
    return DecoderConfig(
        vocab_size=_size(raw, "vocab_size", file, required=True),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=_size(raw, "head_dim", file, default=dim // n_heads),
        hidden_dim=_size(raw, "intermediate_size", file, required=True),
        norm_eps=float(_field(raw, "rms_norm_eps", file, default=1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial,
        max_seq_len=_size(raw, "max_position_embeddings", file, default=4096),
        qkv_bias=facts.bias == "qkv" or (facts.bias == "attention_bias" and attention_bias),
        o_bias=facts.bias == "attention_bias" and attention_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=facts.qk_norm,
        post_norm=facts.post_norm,
        norm_scale_in_fp32=facts.post_norm,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=window,
        fused_projections=facts.fused_projections,
    )


def decoder_config_json(cfg: DecoderConfig, family: str, architecture: str, facts: DecoderFacts) -> dict:
    """The config.json fields of `family` that describe `cfg` (transformers 4 layout, as publishers ship)."""
    raw = {
        "architectures": [architecture], "model_type": family, "hidden_act": "silu",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
        "rope_scaling": ({"rope_type": cfg.rope_scaling["type"],
                          **{k: v for k, v in cfg.rope_scaling.items() if k != "type"}}
                         if cfg.rope_scaling else None),
        **facts.extra_fields,
    }
    if cfg.head_dim != cfg.dim // cfg.n_heads:
        raw["head_dim"] = cfg.head_dim
    if cfg.partial_rotary_factor != 1.0:
        raw["partial_rotary_factor"] = cfg.partial_rotary_factor
    if facts.bias == "attention_bias":
        raw["attention_bias"] = cfg.o_bias
    if cfg.mlp_bias:
        raw["mlp_bias"] = True
    if facts.sliding_window == "config":
        raw["sliding_window"] = cfg.sliding_window
    elif facts.sliding_window == "qwen2":
        raw.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                   max_window_layers=0 if cfg.sliding_window is not None else cfg.n_layers)
    return raw


# --- key tables -------------------------------------------------------------------------------------

_LAYER = "model.layers.{}."
LLAMA_KEYS = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    **{_LAYER + f"self_attn.{p}.{w}": "layers.{}." + f"self_attn.{p}.{w}"
       for p in ("q_proj", "k_proj", "v_proj", "o_proj") for w in ("weight", "bias")},
    **{_LAYER + f"mlp.{p}.{w}": "layers.{}." + f"mlp.{p}.{w}"
       for p in ("gate_proj", "up_proj", "down_proj") for w in ("weight", "bias")},
    _LAYER + "input_layernorm.weight": "layers.{}.input_layernorm.weight",
    _LAYER + "post_attention_layernorm.weight": "layers.{}.post_attention_layernorm.weight",
    # Computed, never loaded; transformers < 4.31 saved it (Llama-2's published shards still hold it).
    _LAYER + "self_attn.rotary_emb.inv_freq": None,
}

OLMO2_KEYS = {
    **{k: v for k, v in LLAMA_KEYS.items() if "input_layernorm" not in k},
    _LAYER + "self_attn.q_norm.weight": "layers.{}.self_attn.q_norm.weight",
    _LAYER + "self_attn.k_norm.weight": "layers.{}.self_attn.k_norm.weight",
    _LAYER + "post_feedforward_layernorm.weight": "layers.{}.post_feedforward_layernorm.weight",
}

PHI3_KEYS = {  # fused [q; k; v] and [gate; up] kept as one matrix each, as the checkpoint and the paper have them
    **{k: v for k, v in LLAMA_KEYS.items() if not any(p in k for p in ("q_proj", "k_proj", "v_proj", "gate_proj",
                                                                          "up_proj", "bias"))},
    _LAYER + "self_attn.qkv_proj.weight": "layers.{}.self_attn.qkv_proj.weight",
    _LAYER + "mlp.gate_up_proj.weight": "layers.{}.mlp.gate_up_proj.weight",
}


def _decoder_family(name, architecture, keys, facts):
    return Family(
        name=name,
        architectures=(architecture,),
        to_config=lambda raw, file: decoder_config(raw, file, facts),
        from_config=lambda cfg: decoder_config_json(cfg, name, architecture, facts),
        build=Decoder,
        keys=keys,
    )


DECODER_FAMILIES = {f.name: f for f in (
    _decoder_family("llama", "LlamaForCausalLM", LLAMA_KEYS, DecoderFacts()),
    _decoder_family("mistral", "MistralForCausalLM", LLAMA_KEYS, DecoderFacts(bias="none", sliding_window="config")),
    _decoder_family("qwen2", "Qwen2ForCausalLM", LLAMA_KEYS, DecoderFacts(bias="qkv", sliding_window="qwen2")),
    _decoder_family("phi3", "Phi3ForCausalLM", PHI3_KEYS, DecoderFacts(
        bias="none", sliding_window="config", fused_projections=True,
        extra_fields={"attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0})),
    _decoder_family("olmo2", "Olmo2ForCausalLM", OLMO2_KEYS, DecoderFacts(qk_norm=True, post_norm=True)),
)}
