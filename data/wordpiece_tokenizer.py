"""BERT's WordPiece tokenizer, from a checkpoint's vocab.txt (+ tokenizer_config.json) or tokenizer.json.

The pipeline is HF tokenizers' BertNormalizer -> BertPreTokenizer -> WordPiece, step for step:
  1. clean: drop NUL, U+FFFD and control characters (category C, except tab/newline/CR), map every
     White_Space character to a space;
  2. put spaces around CJK ideographs, so each becomes its own word;
  3. strip accents (NFD, then drop the non-spacing marks, category Mn) when asked, which by default
     follows lower-casing; then lower-case;
  4. split on whitespace and isolate every punctuation character (Unicode P* and all ASCII symbols);
  5. greedy longest-match-first WordPiece per word, continuations prefixed "##"; a word longer than
     100 characters or with an unmatchable remainder becomes [UNK] as a whole.
Text is plain text: special-token strings such as "[SEP]" inside it are not treated as special.
"""
import json
import unicodedata
from pathlib import Path

import regex

from .pair_encoding import bert_pairs, wrap_pair

CONTROL = regex.compile(r"(?![\t\n\r])[\x00\ufffd\p{C}]")
WHITESPACE = regex.compile(r"\s")
CJK = regex.compile("([\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
                    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f])")
MARKS = regex.compile(r"\p{Mn}")
PUNCT = r"\p{P}!-/:-@\[-`{-~"
WORDS = regex.compile(rf"[{PUNCT}]|[^\s{PUNCT}]+")
CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


class WordPieceTokenizer:
    def __init__(self, vocab: dict[str, int], lowercase: bool = True, strip_accents: bool | None = None,
                 chinese_chars: bool = True, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                 pad_token="[PAD]", prefix="##", max_chars_per_word=100, source="vocab"):
        self.vocab = vocab
        self.inverse = {i: t for t, i in vocab.items()}
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.chinese_chars = chinese_chars
        self.prefix = prefix
        self.max_chars_per_word = max_chars_per_word
        ids = {}
        for role, token in dict(unk=unk_token, cls=cls_token, sep=sep_token, pad=pad_token).items():
            if token not in vocab:
                raise ValueError(f"{source}: the {role} token {token!r} is not in the vocabulary")
            ids[role] = vocab[token]
        self.unk_id, self.cls_id, self.sep_id, self.pad_id = ids["unk"], ids["cls"], ids["sep"], ids["pad"]
        self.bos_id, self.eos_id = self.cls_id, self.sep_id  # the names the decoder tokenizers use
        self.special_ids = set(ids.values())
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, path) -> "WordPieceTokenizer":
        """tokenizer.json when present (its normalizer settings rule), else vocab.txt + tokenizer_config.json."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(path / "tokenizer.json")
        vocab_file = path / "vocab.txt"
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")
        vocab = {line.rstrip("\n"): i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
        conf_file = path / "tokenizer_config.json"
        conf = json.loads(conf_file.read_text()) if conf_file.is_file() else {}
        tokens = {k: _token_text(conf.get(f"{k}_token", d)) for k, d in
                  dict(unk="[UNK]", cls="[CLS]", sep="[SEP]", pad="[PAD]").items()}
        return cls(vocab, lowercase=conf.get("do_lower_case", True), strip_accents=conf.get("strip_accents"),
                   chinese_chars=conf.get("tokenize_chinese_chars", True), unk_token=tokens["unk"],
                   cls_token=tokens["cls"], sep_token=tokens["sep"], pad_token=tokens["pad"], source=str(vocab_file))

    @classmethod
    def from_tokenizer_json(cls, file) -> "WordPieceTokenizer":
        t = json.loads(Path(file).read_text(encoding="utf-8"))
        model, norm = t.get("model") or {}, t.get("normalizer") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"{file}: model.type is {model.get('type')!r}, not 'WordPiece'")
        if norm.get("type") != "BertNormalizer":
            raise ValueError(f"{file}: normalizer.type is {norm.get('type')!r}, not 'BertNormalizer'")
        specials = {p["SpecialToken"]["id"] for p in (t.get("post_processor") or {}).get("pair", [])
                    if "SpecialToken" in p}
        pad = (t.get("padding") or {}).get("pad_token", "[PAD]")
        return cls(model["vocab"], lowercase=norm.get("lowercase", True), strip_accents=norm.get("strip_accents"),
                   chinese_chars=norm.get("handle_chinese_chars", True), unk_token=model.get("unk_token", "[UNK]"),
                   cls_token="[CLS]" if not specials else _first(specials, "CLS", file),
                   sep_token="[SEP]" if not specials else _first(specials, "SEP", file), pad_token=pad,
                   prefix=model.get("continuing_subword_prefix", "##"),
                   max_chars_per_word=model.get("max_input_chars_per_word", 100), source=str(file))

    def normalize(self, text: str) -> str:
        text = WHITESPACE.sub(" ", CONTROL.sub("", text))
        if self.chinese_chars:
            text = CJK.sub(r" \1 ", text)
        if self.strip_accents:
            text = MARKS.sub("", unicodedata.normalize("NFD", text))
        return text.lower() if self.lowercase else text

    def _word_ids(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens."""
        ids = []
        for word in WORDS.findall(self.normalize(text)):
            cached = self._cache.get(word)
            if cached is None:
                cached = self._cache[word] = self._word_ids(word)
            ids.extend(cached)
        return ids

    def encode_pair(self, a: str, b: str | None = None, max_len: int = 128) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] (b [SEP]) with token type ids 0 for a's part, 1 for b's; longest-first truncation."""
        return wrap_pair(self.encode(a), None if b is None else self.encode(b),
                         bert_pairs(self.cls_id, self.sep_id), max_len)

    def decode(self, ids: list[int]) -> str:
        text = " ".join(self.inverse[i] for i in ids if i not in self.special_ids)
        text = text.replace(f" {self.prefix}", "")
        for old, new in CLEANUP:
            text = text.replace(old, new)
        return text


def _token_text(token) -> str:
    """A special token given as a string or as an AddedToken dict ({"content": ...})."""
    return token["content"] if isinstance(token, dict) else token


def _first(specials: set[str], word: str, file) -> str:
    found = sorted(s for s in specials if word in s)
    if not found:
        raise ValueError(f"{file}: post_processor.pair has no {word} special token ({sorted(specials)})")
    return found[0]
