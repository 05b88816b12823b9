"""SentencePiece `tokenizer.model` (Llama-2, Mistral, Phi-3) plus the checkpoint's added tokens.

Each text segment between added tokens is encoded by the `sentencepiece` library on its own, so each gets
the model's dummy prefix `▁` (HF's legacy Llama behaviour, the Prepend normaliser of Phi-3's tokenizer.json,
and how mistral-common encodes each chat segment). Decoding a run of ids through the library drops that
prefix again, so decode(encode(text)) == text.
"""
from pathlib import Path

import sentencepiece

from data.tokenizer_base import AddedToken, Tokenizer


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_file: str | Path, added_tokens: list[AddedToken]):
        super().__init__(added_tokens)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.load(str(model_file))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_file}: not a readable SentencePiece model ({e})") from None
        self._n_model_ids = self.sp.get_piece_size()

    def _encode_text(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def _decode_run(self, ids: list[int]) -> str:
        if ids and max(ids) >= self._n_model_ids:
            bad = next(i for i in ids if i >= self._n_model_ids)
            raise ValueError(f"token id {bad} is neither a SentencePiece piece (< {self._n_model_ids}) nor an added token")
        return self.sp.decode(ids)

    def _model_token_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i
