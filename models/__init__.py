"""Hand-written networks (decoder LLMs, encoders) and their loading: `load_model(path)` reads any supported
checkpoint directory, the kind and family coming from its config.json."""
from .checkpoint import load_config, load_model
from .decoder import Decoder, DecoderConfig
from .encoder import Encoder, EncoderConfig
from .generate import generate
from .kv_cache import KVCache
from .random_checkpoint import write_random_checkpoint

__all__ = ["load_model", "load_config", "Decoder", "DecoderConfig", "Encoder", "EncoderConfig", "KVCache",
           "generate", "write_random_checkpoint"]
