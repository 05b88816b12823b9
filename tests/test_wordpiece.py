"""Our WordPiece tokenizer against HF's (the oracle) on the real all-MiniLM-L6-v2 vocabulary and real text."""
import json

import pytest

from data.pair_encoding import truncated_lengths
from data.wordpiece_tokenizer import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

TRICKY = ["Héllo, WORLD!! naïve café 東京タワー is 333m tall; e-mail: a.b@c.d $5.00 (approx) — “quoted” ...",
          "tab\tnew\nline\r\u00a0nbsp\u2028sep\x00nul\ufffd zero\u200bwidth \u0085nel",
          "superlongwordwithoutanyspaces" * 5, "İstanbul ǅ ß ﬁ Ⅻ ½ ①", "", "   ", "can't won't I'm"]


def real_texts(shared) -> list[str]:
    texts = [json.loads(line)["question"] for line in (shared / "gsm8k" / "test.jsonl").open()]
    for task, cols in [("SST-2", [0]), ("MRPC", [3, 4]), ("QNLI", [1, 2]), ("STS-B", [7, 8])]:
        lines = (shared / "glue" / task / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
        texts += [line.split("\t")[c] for line in lines for c in cols]
    return texts


def test_ids_equal_the_oracle_on_real_text(minilm_dir, shared_data):
    ours = WordPieceTokenizer.from_dir(minilm_dir)
    oracle = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    oracle.no_truncation()
    oracle.no_padding()  # MiniLM's tokenizer.json pads to a fixed 128
    texts = real_texts(shared_data) + TRICKY
    assert len(texts) > 15000
    expected = [e.ids for e in oracle.encode_batch(texts, add_special_tokens=False)]
    mismatches = [(t, ours.encode(t), e) for t, e in zip(texts, expected) if ours.encode(t) != e]
    assert not mismatches, mismatches[:3]


def test_vocab_txt_and_tokenizer_json_agree(minilm_dir, tmp_path):
    """The same tokenizer read from vocab.txt + tokenizer_config.json (no tokenizer.json)."""
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(minilm_dir / name)
    from_txt, from_json = WordPieceTokenizer.from_dir(tmp_path), WordPieceTokenizer.from_dir(minilm_dir)
    assert (from_txt.cls_id, from_txt.sep_id, from_txt.pad_id, from_txt.unk_id) == (101, 102, 0, 100)
    for text in TRICKY:
        assert from_txt.encode(text) == from_json.encode(text)


def test_pairs_and_truncation_equal_the_oracle(minilm_dir, shared_data):
    transformers = pytest.importorskip("transformers")
    oracle = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    ours = WordPieceTokenizer.from_dir(minilm_dir)
    lines = (shared_data / "glue" / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:60]
    pairs = [line.split("\t")[3:5] for line in lines]
    for max_len in (128, 24, 17):
        for a, b in pairs + [(TRICKY[0], None)]:
            ref = oracle(a, b, truncation=True, max_length=max_len)
            assert ours.encode_pair(a, b, max_len) == (ref["input_ids"], ref["token_type_ids"]), (a, b, max_len)


@pytest.mark.parametrize("n1,n2,budget,expected", [
    (3, 4, 10, (3, 4)),  # fits
    (2, 9, 7, (2, 5)),  # the short side fits in half the budget: only the long side is cut
    (5, 5, 7, (3, 4)),  # tie: the second side gets the odd token
    (6, 5, 7, (4, 3)),  # otherwise the longer side gets it
])
def test_longest_first_lengths(n1, n2, budget, expected):
    # expected values read off BertTokenizerFast(truncation=True) for these lengths
    assert truncated_lengths(n1, n2, budget) == expected


def test_decode_joins_word_pieces(minilm_dir):
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    ids, _ = tok.encode_pair("The tokenizer's unbelievably fast, isn't it?")
    assert tok.decode(ids) == "the tokenizer's unbelievably fast, isn't it?"
