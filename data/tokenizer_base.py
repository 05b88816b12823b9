"""What every tokenizer shares: added tokens split out of the text first, then the model encodes the rest.

An added token (Phi-3's `<|user|>`, Qwen2's `<|im_end|>`, OLMo-2's `<|endoftext|>`) is matched literally in
the raw text, longest first, and becomes its own id; the text between added tokens is encoded segment by
segment by the model (SentencePiece or byte-level BPE). `lstrip`/`rstrip` make the match also swallow the
whitespace on that side, as HF's AddedToken does (Phi-3's `<|end|>\\n` is one id).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import regex

from data.pair_encoding import PairFormat, wrap_pair


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False


class Tokenizer:
    """Base class: `encode`/`decode` around added tokens; subclasses encode and decode plain text runs."""

    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    pair_format: PairFormat | None = None  # an encoder's sentence-pair template (load_tokenizer sets it)

    def __init__(self, added_tokens: list[AddedToken]):
        self.set_added_tokens(added_tokens)

    def set_added_tokens(self, added_tokens: list[AddedToken]) -> None:
        """Replace the added tokens (the loader adds the named special tokens once the vocabulary exists)."""
        self.added_tokens = sorted(added_tokens, key=lambda t: t.id)
        self._added_by_id = {t.id: t for t in self.added_tokens}
        self._added_by_content = {t.content: t for t in self.added_tokens}
        # Longest content first so that a token that is a prefix of another never wins; one group per token.
        ordered = sorted(self.added_tokens, key=lambda t: -len(t.content))
        self._group_ids = [t.id for t in ordered]
        alternatives = [
            ("\\s*" if t.lstrip else "") + f"({regex.escape(t.content)})" + ("\\s*" if t.rstrip else "")
            for t in ordered
        ]
        self._added_re = regex.compile("|".join(alternatives)) if alternatives else None

    # --- to be provided by the model: _n_model_ids (ids 0.._n_model_ids-1 belong to the model) ---------
    _n_model_ids: int = 0

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_run(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _model_token_id(self, token: str) -> int | None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids: the model's, and added tokens past them (max id + 1)."""
        return max(self._n_model_ids, 1 + max((t.id for t in self.added_tokens), default=-1))

    def encode_pair(self, a: str, b: str | None = None, max_len: int = 128) -> tuple[list[int], list[int]]:
        """(ids, token types) of one text or a pair in the encoder's template (data/pair_encoding.py)."""
        if self.pair_format is None:
            raise ValueError("this tokenizer has no sentence-pair template (only BERT and RoBERTa tokenizers do)")
        return wrap_pair(self.encode(a), None if b is None else self.encode(b), self.pair_format, max_len)

    def token_to_id(self, token: str) -> int | None:
        """The id of one whole token string (added token or model vocabulary entry), None if absent."""
        added = self._added_by_content.get(token)
        return added.id if added is not None else self._model_token_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS/EOS added."""
        if self._added_re is None:
            return self._encode_text(text)
        ids: list[int] = []
        start = 0
        for match in self._added_re.finditer(text):
            if match.start() > start:
                ids.extend(self._encode_text(text[start:match.start()]))
            ids.append(self._group_ids[match.lastindex - 1])
            start = match.end()
        if start < len(text):
            ids.extend(self._encode_text(text[start:]))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; added tokens render as their content (special ones dropped if asked)."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if i < 0 or i >= self.vocab_size)
            raise ValueError(f"token id {bad} is out of range for this tokenizer ({self.vocab_size} ids)")
        if not self._added_by_id.keys() & set(ids):
            return self._decode_run(ids)
        parts, run = [], []
        for i in ids:
            added = self._added_by_id.get(i)
            if added is None:
                run.append(i)
                continue
            if run:
                parts.append(self._decode_run(run))
                run = []
            if not (skip_special_tokens and added.special):
                parts.append(added.content)
        if run:
            parts.append(self._decode_run(run))
        return "".join(parts)


def read_json(path: Path):
    """A JSON file, or an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
