"""Byte-level BPE (GPT-2, RoBERTa, Qwen2, OLMo-2), our own implementation.

    text -> [normalise (NFC...)] -> pre-tokenise (regex) -> each pre-token's UTF-8 bytes as GPT-2's printable
    byte characters -> merge the adjacent pair of lowest merge rank until none is left -> vocabulary ids

A word cache maps each pre-token to its ids, so a word seen before costs one dict lookup: the whole hot
path of `_encode_text` is a regex `findall` and a `map` over the cache, with BPE run only on new words.

Built either from a HF `tokenizer.json` (regex, normaliser and merges read from the file) or from
`vocab.json` + `merges.txt` with a pre-tokeniser regex from `PRETOKENIZE` (the loader picks the flavour).
"""
import unicodedata
from itertools import chain
from pathlib import Path

import regex

from data.tokenizer_base import AddedToken, Tokenizer, read_json

# The pre-tokenise regexes of the vocab.json + merges.txt flavours (HF's slow GPT2Tokenizer / Qwen2Tokenizer).
PRETOKENIZE = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
NORMALIZATION = {"gpt2": None, "qwen2": "NFC"}
_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_CACHE_LIMIT = 1_000_000  # words; the cache is cleared when it grows past this, so memory stays bounded


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (space -> 'Ġ')."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_BYTE_TABLE = [BYTE_TO_CHAR[b] for b in range(256)]
_CHAR_TO_LATIN1 = {ord(c): b for c, b in CHAR_TO_BYTE.items()}  # str.translate tables: C speed over the vocabulary
_DROP_BYTE_CHARS = dict.fromkeys(map(ord, CHAR_TO_BYTE))


class _WordCache(dict):
    """pre-token -> ids; a miss runs BPE once and remembers the answer."""

    def __init__(self, bpe):
        super().__init__()
        self._bpe = bpe

    def __missing__(self, word: str) -> list[int]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[word] = self._bpe(word)
        return ids


class ByteLevelBPETokenizer(Tokenizer):
    """`splits` is the pre-tokeniser: a list of (regex pattern, keep) applied in turn, keep in
    {"matches", "gaps", "both"} (HF Split behaviours Removed+invert, Removed, Isolated)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], splits: list[tuple[str, str]],
                 added_tokens: list[AddedToken], normalization: str | None = None, prefix_space: bool = False,
                 ignore_merges: bool = False):
        super().__init__(added_tokens)
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._splits = [(regex.compile(p), keep) for p, keep in splits]
        # Fast path: one regex whose matches are the pre-tokens (findall returns groups if the regex has any).
        single = len(self._splits) == 1 and self._splits[0][1] == "matches" and not self._splits[0][0].groups
        self._findall = self._splits[0][0].findall if single else None
        self._normalization = normalization
        self._prefix_space = prefix_space
        self._ignore_merges = ignore_merges
        self._cache = _WordCache(self._bpe)
        self._n_model_ids = 1 + max(vocab.values(), default=-1)
        self._id_to_bytes: list[bytes | None] = [None] * self._n_model_ids
        for token, i in vocab.items():
            # A non-byte-level entry (a special token stored in vocab.json) renders as its own text.
            is_byte_level = not token.translate(_DROP_BYTE_CHARS)
            self._id_to_bytes[i] = token.translate(_CHAR_TO_LATIN1).encode("latin-1") if is_byte_level else token.encode()

    def _model_token_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def _pretokenize(self, text: str) -> list[str]:
        pieces = [text]
        for pattern, keep in self._splits:
            pieces = [s for p in pieces for s in _split(pattern, p, keep)]
        return pieces

    def _encode_text(self, text: str) -> list[int]:
        if self._normalization and not text.isascii():
            text = unicodedata.normalize(self._normalization, text)
        if self._prefix_space and not text.startswith(" "):
            text = " " + text
        pieces = self._findall(text) if self._findall else self._pretokenize(text)
        return list(chain.from_iterable(map(self._cache.__getitem__, pieces)))

    def _bpe(self, piece: str) -> list[int]:
        word = "".join([_BYTE_TABLE[b] for b in piece.encode("utf-8")])
        if self._ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols = list(word)
        ranks = self.ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            return [self.vocab[s] for s in symbols]
        except KeyError as e:
            raise ValueError(f"byte-level BPE: symbol {e.args[0]!r} of {piece!r} is not in the vocabulary") from None

    def _decode_run(self, ids: list[int]) -> str:
        table = self._id_to_bytes
        if ids and max(ids) >= len(table):
            raise ValueError(f"token id {max(ids)} is neither in the vocabulary nor an added token")
        parts = [table[i] for i in ids]
        if None in parts:
            bad = ids[parts.index(None)]
            raise ValueError(f"token id {bad} has no token in this vocabulary")
        return b"".join(parts).decode("utf-8", errors="replace")


def _split(pattern, text: str, keep: str) -> list[str]:
    """The matches of `pattern` in `text`, the gaps between them, or both in order (empty pieces dropped)."""
    out, start = [], 0
    for m in pattern.finditer(text):
        if keep != "matches" and m.start() > start:
            out.append(text[start:m.start()])
        if keep != "gaps" and m.end() > m.start():
            out.append(m.group())
        start = m.end()
    if keep != "matches" and start < len(text):
        out.append(text[start:])
    return out


def read_merges_txt(path: Path) -> list[tuple[str, str]]:
    """merges.txt: an optional `#version` header line, then one `a b` pair per line."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and not (n == 1 and line.startswith("#version"))]
    pairs = [line.split(" ") for _, line in numbered]
    if any(len(pair) != 2 for pair in pairs):
        n, line = next(numbered[k] for k, pair in enumerate(pairs) if len(pair) != 2)
        raise ValueError(f"{path}: line {n} is not a merge 'a b': {line!r}")
    return [(a, b) for a, b in pairs]


def check_vocab_merges(path: Path, vocab: dict, merges: list[tuple[str, str]]):
    """As HF's tokenizers checks at load time: integer ids, and every merge's two symbols and its result are
    tokens of the vocabulary (otherwise the mistake would only show at encode time, or never)."""
    bad = next((t for t, i in vocab.items() if isinstance(i, bool) or not isinstance(i, int)), None)
    if bad is not None:
        raise ValueError(f"{path}: token {bad!r} has id {vocab[bad]!r}; ids must be integers")
    for n, (a, b) in enumerate(merges):
        missing = [t for t in (a, b, a + b) if t not in vocab]
        if missing:
            raise ValueError(f"{path}: merge {n} ({a!r} {b!r}) uses {missing[0]!r}, which is not in the vocabulary")


def read_vocab_json(path: Path) -> dict[str, int]:
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{path}: expected a JSON object mapping token strings to integer ids")
    return vocab


def bpe_from_vocab_merges(vocab_path: Path, merges_path: Path, flavour: str, added_tokens: list[AddedToken],
                          prefix_space: bool = False) -> ByteLevelBPETokenizer:
    """vocab.json + merges.txt with the pre-tokeniser and normaliser of a known flavour ("gpt2", "qwen2")."""
    vocab, merges = read_vocab_json(vocab_path), read_merges_txt(merges_path)
    check_vocab_merges(merges_path, vocab, merges)
    return ByteLevelBPETokenizer(vocab, merges,
                                 [(PRETOKENIZE[flavour], "matches")], added_tokens,
                                 normalization=NORMALIZATION[flavour], prefix_space=prefix_space)


def bpe_from_tokenizer_json(path: Path, spec: dict, added_tokens: list[AddedToken]) -> ByteLevelBPETokenizer:
    """A HF tokenizer.json (already parsed as `spec`) whose model is byte-level BPE."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model.type is {model.get('type')!r}; only byte-level 'BPE' is supported here")
    for key, allowed in (("byte_fallback", (None, False)), ("continuing_subword_prefix", (None, "")),
                         ("end_of_word_suffix", (None, "")), ("dropout", (None, 0, 0.0))):
        if model.get(key) not in allowed:
            raise ValueError(f"{path}: model.{key} = {model.get(key)!r} is not supported by byte-level BPE")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: model.vocab must be an object of token -> id")
    merges = []
    for n, m in enumerate(model.get("merges", [])):
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{path}: model.merges[{n}] is not a pair: {m!r}")
        merges.append((pair[0], pair[1]))
    check_vocab_merges(path, vocab, merges)
    decoder = spec.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
        raise ValueError(f"{path}: decoder type {decoder.get('type')!r} is not ByteLevel")
    splits, prefix_space = _parse_pretokenizer(path, spec.get("pre_tokenizer"))
    return ByteLevelBPETokenizer(vocab, merges, splits, added_tokens,
                                 normalization=_parse_normalizer(path, spec.get("normalizer")),
                                 prefix_space=prefix_space, ignore_merges=bool(model.get("ignore_merges", False)))


def _parse_normalizer(path: Path, spec: dict | None) -> str | None:
    if spec is None:
        return None
    steps = spec.get("normalizers", []) if spec.get("type") == "Sequence" else [spec]
    forms = [s.get("type") for s in steps]
    if len(forms) > 1 or any(f not in _UNICODE_FORMS for f in forms):
        raise ValueError(f"{path}: normalizer {forms} is not supported (one of {_UNICODE_FORMS} or none)")
    return forms[0] if forms else None


def _parse_pretokenizer(path: Path, spec: dict | None) -> tuple[list[tuple[str, str]], bool]:
    """HF pre_tokenizer -> (splits, prefix_space). Accepts Split steps and a ByteLevel step (the byte map
    itself is always applied; `use_regex` adds GPT-2's regex, `add_prefix_space` only as the first step)."""
    if spec is None:
        raise ValueError(f"{path}: no pre_tokenizer; byte-level BPE needs a ByteLevel pre-tokenizer")
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    splits, prefix_space, byte_level = [], False, False
    for n, step in enumerate(steps):
        kind = step.get("type")
        if kind == "ByteLevel":
            byte_level = True
            if step.get("add_prefix_space"):
                if n != 0:
                    raise ValueError(f"{path}: ByteLevel add_prefix_space after another pre-tokenizer is not supported")
                prefix_space = True
            if step.get("use_regex", True):
                splits.append((PRETOKENIZE["gpt2"], "matches"))
        elif kind == "Split":
            pattern = step.get("pattern", {})
            if "Regex" in pattern:
                source = pattern["Regex"]
            elif "String" in pattern:
                source = regex.escape(pattern["String"])
            else:
                raise ValueError(f"{path}: Split pattern {pattern!r} has neither Regex nor String")
            behavior, invert = step.get("behavior"), bool(step.get("invert", False))
            if behavior == "Isolated":
                keep = "both"
            elif behavior == "Removed":
                keep = "matches" if invert else "gaps"
            else:
                raise ValueError(f"{path}: Split behavior {behavior!r} is not supported (Removed, Isolated)")
            try:
                regex.compile(source)
            except regex.error as e:
                raise ValueError(f"{path}: pre_tokenizer Split regex {source!r} does not compile ({e})") from None
            splits.append((source, keep))
        else:
            raise ValueError(f"{path}: pre_tokenizer type {kind!r} is not supported (Split, ByteLevel)")
    if not byte_level:
        raise ValueError(f"{path}: pre_tokenizer has no ByteLevel step; this is not a byte-level BPE tokenizer")
    return splits, prefix_space
