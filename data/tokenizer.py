"""`load_tokenizer(path)`: the tokenizer of a checkpoint directory, read from the files its publisher ships.

`path` may also be a .gguf file (its `tokenizer.ggml.*` metadata, data/gguf_tokenizer.py) or `package:<module>`
(data/packaged_checkpoint.py).

Which model (first present wins):
    tokenizer.model                 SentencePiece (Llama-2, Mistral, Phi-3)
    tokenizer.json                  byte-level BPE, regex/normaliser/merges from the file (OLMo-2)
    vocab.json + merges.txt         byte-level BPE with a known pre-tokeniser (Qwen2, GPT-2, RoBERTa), chosen
                                    by tokenizer_config.json `tokenizer_class`, else config.json `model_type`
    vocab.txt (or a WordPiece tokenizer.json)   BERT WordPiece (data/wordpiece_tokenizer.py), checked first;
                                    its bos/eos/pad are [CLS]/[SEP]/[PAD]

Added tokens (split out of the text before the model sees it), later entries overriding earlier ones by id:
added_tokens.json, tokenizer.json `added_tokens`, tokenizer_config.json `added_tokens_decoder`; then every
special token named in tokenizer_config.json (bos/eos/unk/pad/... and `additional_special_tokens`), as HF does.

bos_id / eos_id / pad_id: the first file that has the key decides, and an explicit null there means "none"
(Qwen2's tokenizer_config says `bos_token: null` although its config.json names an id):
    1. tokenizer_config.json   `bos_token` (a string or an AddedToken dict)
    2. special_tokens_map.json `bos_token`
    3. generation_config.json  `bos_token_id` (a list, as Qwen2's eos [151645, 151643], gives its first id)
    4. config.json             `bos_token_id`
    5. the SentencePiece model's own bos/eos/pad id (none is -1 -> None); None for BPE.
"""
from pathlib import Path

from data.bpe_tokenizer import bpe_from_tokenizer_json, bpe_from_vocab_merges
from data.gguf_file import GGUFFile, is_gguf
from data.gguf_tokenizer import gguf_tokenizer
from data.packaged_checkpoint import resolve_checkpoint_path
from data.pair_encoding import roberta_pairs
from data.spm_tokenizer import SentencePieceTokenizer
from data.tokenizer_base import AddedToken, Tokenizer, read_json
from data.wordpiece_tokenizer import WordPieceTokenizer

_FLAVOUR_BY_CLASS = {"GPT2Tokenizer": "gpt2", "RobertaTokenizer": "gpt2", "Qwen2Tokenizer": "qwen2"}
_FLAVOUR_BY_MODEL_TYPE = {"gpt2": "gpt2", "roberta": "gpt2", "qwen2": "qwen2", "qwen2_moe": "qwen2"}
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of checkpoint directory `path`, with bos_id/eos_id/pad_id resolved (see module doc)."""
    root = resolve_checkpoint_path(path)
    if is_gguf(root):
        return gguf_tokenizer(GGUFFile(root))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a checkpoint directory")
    config = _optional_json(root / "tokenizer_config.json")
    spec = _optional_json(root / "tokenizer.json") if (root / "tokenizer.json").is_file() else None
    added = _added_tokens(root, config, spec)
    if _is_wordpiece(root, spec):  # BERT: vocab.txt or a WordPiece tokenizer.json (special ids from the vocab)
        return WordPieceTokenizer.from_dir(root)
    if (root / "tokenizer.model").is_file():
        tok = SentencePieceTokenizer(root / "tokenizer.model", added)
    elif spec is not None:
        tok = bpe_from_tokenizer_json(root / "tokenizer.json", spec, added)
    elif (root / "vocab.json").is_file() or (root / "merges.txt").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root / name}: missing (byte-level BPE needs vocab.json and merges.txt)")
        tok = bpe_from_vocab_merges(root / "vocab.json", root / "merges.txt", _bpe_flavour(root, config), added,
                                    prefix_space=bool(config.get("add_prefix_space", False)))
    else:
        raise FileNotFoundError(f"{root}: no tokenizer files (tokenizer.model, tokenizer.json, or vocab.json + merges.txt)")
    tok.set_added_tokens(tok.added_tokens + _named_special_tokens(root / "tokenizer_config.json", config, tok))
    tok.bos_id, tok.eos_id, tok.pad_id = (_special_id(root, config, tok, name) for name in ("bos", "eos", "pad"))
    if _is_roberta(root, config, spec):
        tok.pair_format = roberta_pairs(tok.bos_id, tok.eos_id)
    return tok


def _is_roberta(root: Path, config: dict, spec: dict | None) -> bool:
    """RoBERTa's <s> a </s></s> b </s> template: tokenizer.json's post-processor says so, else tokenizer_class,
    else (a bare vocab.json + merges.txt folder) config.json's model_type."""
    processor = (spec or {}).get("post_processor") or {}
    if processor:
        return processor.get("type") == "RobertaProcessing"
    if config.get("tokenizer_class"):
        return config["tokenizer_class"].removesuffix("Fast") == "RobertaTokenizer"
    return _optional_json(root / "config.json").get("model_type") == "roberta"


def _is_wordpiece(root: Path, spec: dict | None) -> bool:
    if spec is not None:
        return isinstance(spec.get("model"), dict) and spec["model"].get("type") == "WordPiece"
    return (root / "vocab.txt").is_file() and not (root / "vocab.json").is_file()


def _optional_json(path: Path) -> dict:
    """A JSON object file, or {} when the file is absent."""
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _added_token(path: Path, where: str, entry, token_id=None) -> AddedToken:
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise ValueError(f"{path}: {where} is not an added token with a string 'content': {entry!r}")
    if entry.get("single_word"):
        raise ValueError(f"{path}: {where} has single_word=true, which is not supported")
    try:
        token_id = int(entry["id"] if token_id is None else token_id)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: {where} has no integer id") from None
    return AddedToken(entry["content"], token_id, special=bool(entry.get("special", False)),
                      lstrip=bool(entry.get("lstrip", False)), rstrip=bool(entry.get("rstrip", False)))


def _added_tokens(root: Path, config: dict, spec: dict | None) -> list[AddedToken]:
    by_id: dict[int, AddedToken] = {}
    path = root / "added_tokens.json"
    plain = _optional_json(path)
    for content, token_id in plain.items():
        token = _added_token(path, f"entry {content!r}", {"content": content}, token_id)
        by_id[token.id] = token
    path = root / "tokenizer.json"
    for n, entry in enumerate((spec or {}).get("added_tokens", [])):
        token = _added_token(path, f"added_tokens[{n}]", entry)
        by_id[token.id] = token
    path = root / "tokenizer_config.json"
    for key, entry in config.get("added_tokens_decoder", {}).items():
        token = _added_token(path, f"added_tokens_decoder[{key!r}]", entry, key)
        by_id[token.id] = token
    seen: dict[str, int] = {}
    for token in by_id.values():
        if token.content in seen:
            raise ValueError(f"{root}: added token {token.content!r} has two ids, {seen[token.content]} and {token.id}")
        seen[token.content] = token.id
    return list(by_id.values())


def _token_content(path: Path, key: str, value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, an AddedToken dict, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: {key} must be a string, an AddedToken object or null, got {value!r}")


def _named_special_tokens(path: Path, config: dict, tok: Tokenizer) -> list[AddedToken]:
    """The special tokens tokenizer_config.json names but does not list as added: never split by the model."""
    named = [(key, config.get(key)) for key in _NAMED_SPECIAL if key in config]
    named += [(f"additional_special_tokens[{n}]", v) for n, v in enumerate(config.get("additional_special_tokens", []))]
    present = {t.content for t in tok.added_tokens}
    extra = []
    for key, value in named:
        content = _token_content(path, key, value)
        if content is None or content in present:
            continue
        token_id = tok.token_to_id(content)
        if token_id is None:
            raise ValueError(f"{path}: {key} {content!r} is not a token of this vocabulary")
        flags = value if isinstance(value, dict) else {}
        extra.append(AddedToken(content, token_id, special=True,
                                lstrip=bool(flags.get("lstrip", False)), rstrip=bool(flags.get("rstrip", False))))
        present.add(content)
    return extra


def _special_id(root: Path, config: dict, tok: Tokenizer, name: str) -> int | None:
    for filename, data in (("tokenizer_config.json", config),
                           ("special_tokens_map.json", _optional_json(root / "special_tokens_map.json"))):
        key = f"{name}_token"
        if key in data:
            content = _token_content(root / filename, key, data[key])
            if content is None:
                return None
            token_id = tok.token_to_id(content)
            if token_id is None:
                raise ValueError(f"{root / filename}: {key} {content!r} is not a token of this vocabulary")
            return token_id
    for filename in ("generation_config.json", "config.json"):
        data, key = _optional_json(root / filename), f"{name}_token_id"
        if key in data:
            value = data[key]
            if isinstance(value, list):
                value = value[0] if value else None
            if value is None:
                return None
            if not isinstance(value, int) or not 0 <= value < tok.vocab_size:
                raise ValueError(f"{root / filename}: {key} = {data[key]!r} is not an id below {tok.vocab_size}")
            return value
    if isinstance(tok, SentencePieceTokenizer):
        token_id = getattr(tok.sp, f"{name}_id")()
        return None if token_id < 0 else token_id
    return None


def _bpe_flavour(root: Path, config: dict) -> str:
    """Which known pre-tokeniser a vocab.json + merges.txt pair uses, from the files, never the folder name."""
    cls = config.get("tokenizer_class")
    if cls is not None:
        flavour = _FLAVOUR_BY_CLASS.get(cls.removesuffix("Fast"))
        if flavour is None:
            raise ValueError(f"{root / 'tokenizer_config.json'}: tokenizer_class {cls!r} is not a known byte-level "
                             f"BPE flavour ({sorted(_FLAVOUR_BY_CLASS)})")
        return flavour
    model_type = _optional_json(root / "config.json").get("model_type")
    flavour = _FLAVOUR_BY_MODEL_TYPE.get(model_type)
    if flavour is None:
        raise ValueError(f"{root}: cannot tell the pre-tokeniser of vocab.json + merges.txt: tokenizer_config.json "
                         f"has no tokenizer_class and config.json model_type {model_type!r} is not one of "
                         f"{sorted(_FLAVOUR_BY_MODEL_TYPE)}")
    return flavour
