"""Hand-written networks and their checkpoint loading."""
from .checkpoint import load_config, load_model
from .decoder import Decoder, DecoderConfig
from .generate import generate
from .kv_cache import KVCache
from .random_checkpoint import write_random_checkpoint

__all__ = ["load_model", "load_config", "Decoder", "DecoderConfig", "KVCache", "generate", "write_random_checkpoint"]
