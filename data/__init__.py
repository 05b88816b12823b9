"""Tokenizers, datasets, prompt formats, collation, answer extraction and task metrics."""
from data.tokenizer import load_tokenizer

__all__ = ["load_tokenizer"]
