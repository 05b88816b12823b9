"""GSM8K parsing and answer extraction, MetaMathQA reading/tokenising/caching, collation, the chunked loss."""
import json

import pytest
import torch
import torch.nn.functional as F

from data.collate import IGNORE, build_example, collate_left_padded
from data.gsm8k import extract_prediction, parse_gold, read_problems
from data.metamath import load_splits, read_gsm_rows
from data.synthetic_math import make_problems, to_gsm8k, write_gsm8k_jsonl, write_metamath_json
from models.lm_loss import chunked_cross_entropy


class ByteTokenizer:
    """Bytes as ids 0..255; BOS 256, EOS 257, no pad (so pad falls back to EOS). Counts encode calls."""
    bos_id, eos_id, pad_id = 256, 257, None

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()


def test_every_gsm8k_test_answer_parses(shared_data):
    problems = read_problems(shared_data / "gsm8k/test.jsonl")
    assert len(problems) == 1319
    assert problems[0].target == 18.0  # the file's first answer ends "#### 18"
    # SOURCES.md: the finals are integers, 14 test answers carry thousands commas, two are negative (-10, -3)
    assert all(p.target == int(p.target) for p in problems)
    assert sum("," in p.answer.rsplit("####", 1)[1] for p in problems) == 14
    assert sorted(p.target for p in problems if p.target < 0) == [-10.0, -3.0]


def test_gold_uses_the_last_marker_and_drops_commas():
    assert parse_gold("a #### 3 then\n#### 1,450,000") == 1450000.0
    with pytest.raises(ValueError):
        parse_gold("no marker")


@pytest.mark.parametrize("text, expected", [
    ("so 2 + 2 = 4\n#### 4\nThe answer is: 4", 4.0),
    ("#### 1,234 apples", 1234.0),  # the official regex read this as 1 (methods.md bug 16)
    ("####-3", -3.0),
    ("#### 2.5 and later #### 7", 2.5),  # the first marker wins
    ("#### .5", 0.5),
    ("#### $12", None),
    ("The answer is 12", None),
])
def test_prediction_extraction(text, expected):
    assert extract_prediction(text) == expected


def test_malformed_gsm8k_line_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl, line 2: malformed GSM8K record"):
        read_problems(path)


def test_synthetic_problems_are_seeded_and_their_answers_check_out(tmp_path):
    assert make_problems(20, seed=3) == make_problems(20, seed=3) != make_problems(20, seed=4)
    write_gsm8k_jsonl(tmp_path / "g.jsonl", 40, seed=3)
    problems = read_problems(tmp_path / "g.jsonl")
    for raw, parsed in zip(make_problems(40, seed=3), problems):
        assert parsed.target == raw["answer"] == int(raw["steps"][-1].split(">>")[1].split()[0].rstrip(".").replace("$", ""))
        assert to_gsm8k(raw)["question"] == parsed.question


def test_metamath_reading_filters_gsm_and_names_bad_records(tmp_path):
    path = tmp_path / "m.json"
    write_metamath_json(path, 20)
    rows = read_gsm_rows(path)
    assert len(rows) == 16 and all("GSM" in r["type"] for r in rows)  # every fifth record is MATH_AnsAug
    assert rows[0]["response"].endswith("The answer is: " + rows[0]["response"].split("#### ")[1].split("\n")[0])
    records = json.loads(path.read_text())
    del records[7]["query"]
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"m.json: record 7 has no string field 'query'"):
        read_gsm_rows(path)


def test_example_masks_bos_and_prompt_and_truncates_from_the_left():
    tok = ByteTokenizer()
    ids, n_masked = build_example(tok, "Q: x\nA: ", "42", max_tokens=100)
    assert ids == [256] + list(b"Q: x\nA: 42") + [257] and n_masked == 1 + len("Q: x\nA: ")
    short, n_short = build_example(tok, "Q: x\nA: ", "42", max_tokens=5)
    assert short == ids[-5:] and n_short == 2  # ":" and " " are the two prompt tokens left
    cut, n_cut = build_example(tok, "Q: x\nA: ", "42", max_tokens=len(ids) - 2)
    assert cut == ids[2:] and n_cut == n_masked - 2


def test_collate_pads_left_with_positions_and_labels():
    batch = collate_left_padded([(torch.tensor([1, 2, 3, 4]), 2), (torch.tensor([5, 6]), 1)], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [9, 9, 5, 6]]
    assert batch["pad_mask"].tolist() == [[True] * 4, [False, False, True, True]]
    assert batch["positions"].tolist() == [[0, 1, 2, 3], [1, 1, 0, 1]]  # pads get 1, as HF
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, IGNORE, 6]]


def test_splits_are_shuffled_deterministic_and_cached(tmp_path):
    data, tok_dir = tmp_path / "m.json", tmp_path / "tok"
    write_metamath_json(data, 50)
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text("{}")
    tok = ByteTokenizer()
    kw = dict(n_train=30, n_val=8, max_tokens=512, shuffle_seed=42, cache_dir=tmp_path / "cache")
    train, val = load_splits(data, tok, tok_dir, **kw)
    assert (len(train), len(val)) == (30, 8)
    rows = read_gsm_rows(data)
    decoded = [tok.decode(train[i][0][1:-1].tolist()) for i in range(len(train))]
    in_file_order = ["Q: {}\nA: {}".format(r["query"], r["response"]) for r in rows[:30]]
    assert sorted(decoded) != decoded and decoded != in_file_order  # a real shuffle, not file order
    assert set(decoded) <= {"Q: {}\nA: {}".format(r["query"], r["response"]) for r in rows}
    calls = tok.calls
    train2, _ = load_splits(data, tok, tok_dir, **kw)
    assert tok.calls == calls  # the second load is served from the cache
    assert all(torch.equal(train[i][0], train2[i][0]) for i in range(30))
    (tok_dir / "tokenizer_config.json").write_text('{"changed": 1}')
    load_splits(data, tok, tok_dir, **kw)
    assert tok.calls > calls  # a changed tokenizer file invalidates the cache
    with pytest.raises(ValueError, match=r"40 GSM rows, fewer than data.n_train \+ data.n_val = 41"):
        load_splits(data, tok, tok_dir, **{**kw, "n_train": 39, "n_val": 2})


def test_chunked_cross_entropy_matches_the_full_loss():
    B, T, D, V = 2, 11, 8, 13
    hidden = torch.randn(B, T, D, requires_grad=True)
    head = torch.nn.Linear(D, V, bias=False)
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = IGNORE
    total, n = chunked_cross_entropy(hidden, head, labels, chunk=3)
    total.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    ref = F.cross_entropy(head(hidden)[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE,
                          reduction="sum")
    ref.backward()
    assert n.item() == (labels[:, 1:] != IGNORE).sum().item()
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(grad, hidden.grad)


def test_label_boundary_on_the_real_olmo2_tokenizer(shared_data, tmp_path):
    """Bug 18 measured: with OLMo-2's BPE the prompt alone ends with a lone " " that the full text merges
    into the response's first word, so the official count masks that word; common_prefix keeps it."""
    (tmp_path / "tokenizer.json").symlink_to(shared_data / "tokenizers/olmo2/allenai_dolma2.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "olmo2", "eos_token_id": 100257,
                                                      "pad_token_id": 100277}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}))
    from data import load_tokenizer
    tok = load_tokenizer(tmp_path)
    problems = read_problems(shared_data / "gsm8k/test.jsonl")[:50]
    merged = 0
    for p in problems:
        text = f"Q: {p.question}\nA: "
        ids, official = build_example(tok, text, p.answer, 1024)
        same, prefix = build_example(tok, text, p.answer, 1024, boundary="common_prefix")
        assert ids == same and ids[0] == ids[-1] == 100257  # BOS and EOS are <|endoftext|>
        if official == prefix + 1:  # the lone " " merged into the response's first token, which is masked
            merged += 1
            assert tok.decode(ids[1:prefix]) == text[:-1] and tok.decode(ids[prefix:-1]) == " " + p.answer
        else:  # e.g. a response starting with a digit: the boundary falls between tokens
            assert official == prefix and tok.decode(ids[1:prefix]) == text
    assert merged > 40


def test_non_utf8_files_name_the_file_and_line(tmp_path):
    (tmp_path / "m.json").write_bytes(b'[{"type": "GSM_AnsAug", "query": "caf\xe9", "response": "x"}]')
    with pytest.raises(ValueError, match=r"m.json, line 1 \(byte \d+\): not UTF-8"):
        read_gsm_rows(tmp_path / "m.json")
    (tmp_path / "g.jsonl").write_bytes(b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=r"g.jsonl, line 2 \(byte \d+\): not UTF-8"):
        read_problems(tmp_path / "g.jsonl")
