"""ViT checkpoint families (DINOv2, CLIP's vision tower): config.json -> ViTConfig and one key table each.

    dinov2              facebook/dinov2-*: Dinov2Model keys, or Dinov2ForImageClassification's (`dinov2.` prefix
                        + `classifier`); the mask token (masked-image pretraining only) is known and unused
    clip                openai/clip-vit-*: a CLIPModel (or CLIPForImageClassification) checkpoint, of which the
                        vision tower (`vision_model.*`) is loaded; the text tower, both projections and
                        logit_scale are known and unused. Sizes from config.json's `vision_config`
    clip_vision_model   a CLIPVisionModel checkpoint (`vision_model.` prefix as transformers 4 saved it, or none
                        as transformers 5 does); flat config.json

They are `Family` entries (models/families.py) loaded by the one strict loader of models/checkpoint.py.
config.json fields a publisher left out take transformers' class defaults (Dinov2Config, CLIPVisionConfig),
as `save_pretrained` writes only what differs from them. A fresh classification head is initialised as HF
does: DINOv2 truncated normal(0, initializer_range); CLIP normal(0, hidden_size^-0.5 * initializer_factor);
zero biases; from the global RNG.
"""
import torch

from .families import Family, check_heads
from .vit import ViT, ViTConfig

# transformers' defaults for the fields config.json may omit
DINOV2_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=224,
                       patch_size=14, num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
                       attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, drop_path_rate=0.0,
                       use_swiglu_ffn=False, layerscale_value=1.0, initializer_range=0.02)
CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=224, patch_size=32, num_channels=3, layer_norm_eps=1e-5,
                            hidden_act="quick_gelu", attention_dropout=0.0, initializer_factor=1.0)


def _with_defaults(raw: dict, defaults: dict) -> dict:
    return {**defaults, **{k: v for k, v in raw.items() if v is not None}}


def dinov2_config(raw: dict, file) -> ViTConfig:
    c = _with_defaults(raw, DINOV2_DEFAULTS)
    check_heads(c, file)
    if c["use_swiglu_ffn"]:
        raise ValueError(f"{file}: use_swiglu_ffn=true (DINOv2-giant's SwiGLU MLP) is not supported")
    if c["drop_path_rate"]:
        raise ValueError(f"{file}: drop_path_rate={c['drop_path_rate']} is not supported (stochastic depth; only 0)")
    if c["hidden_act"] != "gelu":
        raise ValueError(f"{file}: unsupported hidden_act {c['hidden_act']!r} for DINOv2 (only 'gelu')")
    return ViTConfig(layout="dinov2", dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                     n_heads=c["num_attention_heads"], hidden_dim=int(c["hidden_size"] * c["mlp_ratio"]),
                     image_size=c["image_size"], patch_size=c["patch_size"], num_channels=c["num_channels"],
                     norm_eps=float(c["layer_norm_eps"]), act="gelu", qkv_bias=bool(c["qkv_bias"]),
                     attention_dropout=float(c["attention_probs_dropout_prob"]),
                     hidden_dropout=float(c["hidden_dropout_prob"]))


def dinov2_config_json(cfg: ViTConfig) -> dict:
    ratio = cfg.hidden_dim // cfg.dim if cfg.hidden_dim % cfg.dim == 0 else cfg.hidden_dim / cfg.dim  # an int if it can
    return {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": cfg.dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "mlp_ratio": ratio, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
            "num_channels": cfg.num_channels, "layer_norm_eps": cfg.norm_eps, "hidden_act": cfg.act,
            "qkv_bias": cfg.qkv_bias, "attention_probs_dropout_prob": cfg.attention_dropout,
            "hidden_dropout_prob": cfg.hidden_dropout, "drop_path_rate": 0.0, "use_swiglu_ffn": False,
            "layerscale_value": 1.0, "initializer_range": 0.02}


def clip_vision_config(raw: dict, file) -> ViTConfig:
    c = _with_defaults(raw, CLIP_VISION_DEFAULTS)
    check_heads(c, file)
    if c["hidden_act"] not in ("quick_gelu", "gelu"):
        raise ValueError(f"{file}: unsupported hidden_act {c['hidden_act']!r} for CLIP (quick_gelu or gelu)")
    return ViTConfig(layout="clip", dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                     n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"], image_size=c["image_size"],
                     patch_size=c["patch_size"], num_channels=c["num_channels"], norm_eps=float(c["layer_norm_eps"]),
                     act=c["hidden_act"], attention_dropout=float(c["attention_dropout"]))


def clip_vision_config_json(cfg: ViTConfig) -> dict:
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": cfg.dim,
            "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.num_channels,
            "layer_norm_eps": cfg.norm_eps, "hidden_act": cfg.act, "attention_dropout": cfg.attention_dropout,
            "initializer_factor": 1.0, "initializer_range": 0.02}


def _vision_tower(raw: dict, file) -> dict:
    """A CLIPConfig's vision_config; the older `vision_config_dict` overrides it, as transformers reads it."""
    vision = raw.get("vision_config") or {}
    override = raw.get("vision_config_dict") or {}
    if not isinstance(vision, dict) or not isinstance(override, dict):
        raise ValueError(f"{file}: 'vision_config' must be a JSON object")
    return {**vision, **override}


def clip_config(raw: dict, file) -> ViTConfig:
    return clip_vision_config(_vision_tower(raw, file), file)


def _key_table(layout: str) -> dict:
    """Checkpoint key template -> our parameter name: the names of a 1-layer model with a head, the layer
    index as {} (our modules mirror the checkpoint's, so the table is the identity)."""
    with torch.device("meta"):
        model = ViT(ViTConfig(layout=layout, dim=8, n_layers=1, n_heads=1, hidden_dim=8, image_size=2,
                              patch_size=1, num_labels=1))
    names = [n.replace(".0.", ".{}.") for n, _ in model.named_parameters()]
    return {n: n for n in names}


DINOV2_KEYS = {**_key_table("dinov2"), "embeddings.mask_token": None}
CLIP_KEYS = _key_table("clip")
CLIP_IGNORED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "embeddings.position_ids")


def _set(model, name, value):
    module_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(module_name) if module_name else model, leaf, torch.nn.Parameter(value))


@torch.no_grad()
def init_dinov2_head(model: ViT, raw: dict, dtype, device):
    """Dinov2ForImageClassification's: weight ~ trunc_normal(0, initializer_range), bias 0."""
    w = model.classifier.weight
    value = torch.empty(w.shape, device=device, dtype=torch.float32)
    torch.nn.init.trunc_normal_(value, std=raw.get("initializer_range", 0.02))
    _set(model, "classifier.weight", value.to(dtype))
    _set(model, "classifier.bias", torch.zeros(w.shape[0], device=device, dtype=dtype))


@torch.no_grad()
def init_clip_head(model: ViT, raw: dict, dtype, device):
    """CLIPForImageClassification's: weight ~ normal(0, hidden_size^-0.5 * initializer_factor), bias 0."""
    w = model.classifier.weight
    std = model.cfg.dim ** -0.5 * raw.get("initializer_factor", 1.0)
    _set(model, "classifier.weight", torch.empty(w.shape, device=device, dtype=torch.float32).normal_(0.0, std).to(dtype))
    _set(model, "classifier.bias", torch.zeros(w.shape[0], device=device, dtype=dtype))


def _vit_family(name, architectures, convert, to_json, keys, prefix, ignored, init_head):
    return Family(name=name, architectures=architectures, to_config=convert, from_config=to_json, build=ViT,
                  keys=keys, key_prefix=prefix, ignored_prefixes=ignored, head="classifier",
                  head_size_key="classifier.weight", init_head=init_head)


VIT_FAMILIES = {f.name: f for f in (
    _vit_family("dinov2", ("Dinov2Model", "Dinov2ForImageClassification"), dinov2_config, dinov2_config_json,
                DINOV2_KEYS, "dinov2.", (), init_dinov2_head),
    _vit_family("clip", ("CLIPModel", "CLIPForImageClassification"), clip_config, None, CLIP_KEYS,
                "vision_model.", CLIP_IGNORED, init_clip_head),
    _vit_family("clip_vision_model", ("CLIPVisionModel",), clip_vision_config, clip_vision_config_json, CLIP_KEYS,
                "vision_model.", ("embeddings.position_ids",), init_clip_head),
)}
