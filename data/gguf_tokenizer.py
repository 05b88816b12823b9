"""The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, on our byte-level BPE.

    tokenizer.ggml.model        "gpt2" (byte-level BPE; the only kind read here)
    tokenizer.ggml.pre          the pre-tokeniser regex: "gpt2"/"smollm" (GPT-2's), "qwen2"; absent: GPT-2's,
                                as transformers' GGUF loader does
    tokenizer.ggml.tokens       the vocabulary, id = position, already in GPT-2's byte alphabet
    tokenizer.ggml.merges       "a b" pairs, by rank
    tokenizer.ggml.token_type   3 (control): special added tokens, never split (<|im_start|>);
                                4 (user-defined): added tokens that are not special
    tokenizer.ggml.{bos,eos,padding}_token_id,  tokenizer.ggml.add_space_prefix,  tokenizer.chat_template
"""
from data.bpe_tokenizer import BYTE_TO_CHAR, NORMALIZATION, PRETOKENIZE, ByteLevelBPETokenizer
from data.gguf_file import GGUFFile
from data.tokenizer_base import AddedToken

# tokenizer.ggml.pre -> the flavour of data/bpe_tokenizer.py (its regex and normalisation)
PRE_TOKENIZERS = {"gpt2": "gpt2", "smollm": "gpt2", "qwen2": "qwen2"}
_CONTROL, _USER_DEFINED = 3, 4
_BYTE_ALPHABET = frozenset(BYTE_TO_CHAR.values())


def gguf_tokenizer(f: GGUFFile) -> ByteLevelBPETokenizer:
    """The byte-level BPE tokenizer of GGUF file `f`, with bos/eos/pad ids and `chat_template` (None if absent)."""
    kind = f.field("tokenizer.ggml.model", str, required=True)
    if kind != "gpt2":
        raise ValueError(f"{f.path}: metadata 'tokenizer.ggml.model' = {kind!r} is not supported (only 'gpt2', "
                         f"byte-level BPE)")
    pre = f.field("tokenizer.ggml.pre", str, default="gpt2")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{f.path}: metadata 'tokenizer.ggml.pre' = {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
    tokens = f.field("tokenizer.ggml.tokens", list, required=True)
    types = f.field("tokenizer.ggml.token_type", list, default=[1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{f.path}: metadata 'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
    merges = []
    for n, m in enumerate(f.field("tokenizer.ggml.merges", list, required=True)):
        pair = m.split(" ") if isinstance(m, str) else []
        if len(pair) != 2:
            raise ValueError(f"{f.path}: metadata 'tokenizer.ggml.merges'[{n}] is not a pair 'a b': {m!r}")
        merges.append((pair[0], pair[1]))
    # A control token outside the byte alphabet is a llama.cpp mislabel; transformers skips it, so do we.
    added = [AddedToken(t, i, special=ttype == _CONTROL) for i, (t, ttype) in enumerate(zip(tokens, types))
             if (ttype == _CONTROL and set(t) <= _BYTE_ALPHABET) or ttype == _USER_DEFINED]
    flavour = PRE_TOKENIZERS[pre]
    tok = ByteLevelBPETokenizer({t: i for i, t in enumerate(tokens)}, merges, [(PRETOKENIZE[flavour], "matches")], added,
                                normalization=NORMALIZATION[flavour],
                                prefix_space=f.field("tokenizer.ggml.add_space_prefix", bool, default=False))
    tok.bos_id, tok.eos_id, tok.pad_id = (_token_id(f, f"tokenizer.ggml.{name}_token_id", len(tokens))
                                          for name in ("bos", "eos", "padding"))
    tok.chat_template = f.field("tokenizer.chat_template", str)
    return tok


def _token_id(f: GGUFFile, key: str, n_tokens: int) -> int | None:
    value = f.field(key, int)
    if value is not None and not 0 <= value < n_tokens:
        raise ValueError(f"{f.path}: metadata '{key}' = {value} is not an id below {n_tokens}")
    return value
