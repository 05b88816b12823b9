"""Alpaca templates, the Code-Feedback answer cut and split, alpaca-cleaned examples, the MT-Bench dev set and
the FastChat answer file."""
import json

import pytest

from data import alpaca, code_feedback, load_tokenizer, mt_bench
from data.alpaca_cleaned import Record, example_ids, prompt as alpaca_training_prompt, read_records

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


# ---- Alpaca templates (methods.md section 8) ------------------------------------------------------------

def test_alpaca_templates_are_the_official_strings():
    assert alpaca.prompt("Say hi.") == PREAMBLE + "\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    assert alpaca.prompt("Add.", "1 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n")
    assert alpaca.prompt("Add.", "1 2", preamble_with_input=False) == (
        "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n")
    # a blank input selects the no-input template (the official `input.strip()`), braces pass through
    assert alpaca.prompt("Fill {x}.", " \n") == alpaca.prompt("Fill {x}.") and "{x}" in alpaca.prompt("Fill {x}.")


# ---- Code-Feedback -------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, cut", [
    # prose, one fenced block, prose: cut after the block's closing fence
    ("Here is the code:\n```python\ndef f():\n    return 1\n```\nIt returns 1.",
     "Here is the code:\n```python\ndef f():\n    return 1\n```"),
    # two blocks: only the first survives
    ("```python\na = 1\n```\nthen\n```python\nb = 2\n```", "```python\na = 1\n```"),
    # no fence at all: the official stray closing fence is appended (methods.md section 9, item 20)
    ("Use a set to remove duplicates.", "Use a set to remove duplicates.```"),
    # an opened fence never closed: everything stays and a closing fence is added
    ("Code:\n```python\nx = 1\n", "Code:\n```python\nx = 1\n```"),
    ("", "```"),
])
def test_code_feedback_answer_cut(answer, cut):
    assert code_feedback.cut_answer(answer) == cut


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_code_feedback_split_is_contiguous_in_file_order(tmp_path):
    rows = [{"query": f"q{i}", "answer": f"a{i}\n```py\nx = {i}\n```\nbye", "resource": "r", "lang": "python"}
            for i in range(12)]
    path = _write_jsonl(tmp_path / "cf.jsonl", rows)
    train, val = code_feedback.read_splits(path, train_rows=range(0, 8), val_rows=range(8, 11))
    assert [p for p, _ in train] == [alpaca.prompt(f"q{i}") for i in range(8)]
    assert [p for p, _ in val] == [alpaca.prompt(f"q{i}") for i in range(8, 11)]
    assert val[0][1] == "a8\n```py\nx = 8\n```"
    assert (code_feedback.TRAIN_ROWS, code_feedback.VAL_ROWS) == (range(0, 100_000), range(100_000, 110_000))


def test_code_feedback_errors_name_file_and_line(tmp_path):
    path = tmp_path / "cf.jsonl"
    path.write_text('{"query": "q", "answer": "a"}\n\n{"query": "q"}\n')
    with pytest.raises(ValueError, match=r"cf.jsonl, line 3: field 'answer' is missing"):
        code_feedback.read_rows(path)
    path.write_text('{"query": "q", "answer": "a"}\n{"query": \n')
    with pytest.raises(ValueError, match=r"cf.jsonl, line 2: malformed JSON"):
        code_feedback.read_rows(path)
    path.write_text('{"query": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match=r"cf.jsonl: 1 rows, fewer than the 3 needed"):
        code_feedback.read_splits(path, train_rows=range(0, 2), val_rows=range(2, 3))
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        code_feedback.read_rows(tmp_path / "nowhere.jsonl")


# ---- alpaca-cleaned -------------------------------------------------------------------------------------

@pytest.fixture
def mistral_dir(shared_data, tmp_path):
    root = tmp_path / "mistral"
    root.mkdir()
    (root / "tokenizer.model").symlink_to(shared_data / "tokenizers/mistral/tokenizer.model.v1")
    return root


def _hf_oracle(mistral_dir):
    """transformers' Llama tokenizer over the same model, with <unk>/<s>/</s> as special added tokens as in
    Mistral-7B's published tokenizer_config.json (legacy=True, as the official code loads it)."""
    transformers = pytest.importorskip("transformers", reason="transformers is the tokenizer oracle")
    pytest.importorskip("google.protobuf", reason="transformers needs protobuf to read tokenizer.model")
    special = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, c in enumerate(("<unk>", "<s>", "</s>"))}
    (mistral_dir / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": special, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "legacy": True}))
    return transformers.AutoTokenizer.from_pretrained(str(mistral_dir), legacy=True)


def test_alpaca_cleaned_examples_match_the_official_tokenisation(mistral_dir):
    tok = load_tokenizer(mistral_dir)
    oracle = _hf_oracle(mistral_dir)
    records = [Record("Give three tips for staying healthy.", "", "1. Eat well.\n2. Sleep.\n3. Move."),
               Record("Translate to French.", "Good morning", "Bonjour"),
               Record("Summarise.", " ", "Nothing to say."),
               Record("Write code.", "", "```python\nprint('héllo')\n```")]
    assert alpaca_training_prompt(records[1]).startswith("### Instruction:\nTranslate")
    assert alpaca_training_prompt(records[2]).startswith(PREAMBLE)
    for record in records:
        for max_tokens in (1024, 20, 8):
            text_prompt = alpaca_training_prompt(record)
            # the official collate_fn: BOS text + prompt (+ output + EOS text), no special tokens added, truncated
            full = oracle(f"<s>{text_prompt}{record.output}</s>", add_special_tokens=False, max_length=max_tokens,
                          truncation=True)["input_ids"]
            source = oracle(f"<s>{text_prompt}", add_special_tokens=False, max_length=max_tokens,
                            truncation=True)["input_ids"]
            assert example_ids(tok, record, max_tokens) == (full, len(source))


def test_alpaca_cleaned_errors_name_file_record_and_field(tmp_path):
    path = tmp_path / "alpaca_data_cleaned.json"
    path.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}, {"instruction": "i", "output": "o"}]))
    with pytest.raises(ValueError, match=r"alpaca_data_cleaned.json: record 1: field 'input' is missing"):
        read_records(path)
    path.write_text('{"instruction": "i"}')
    with pytest.raises(ValueError, match="expected a JSON array"):
        read_records(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match="alpaca_data_cleaned.json: malformed JSON"):
        read_records(path)
    path.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    assert read_records(path) == [Record("i", "", "o")]


# ---- MT-Bench ---------------------------------------------------------------------------------------------

@pytest.fixture
def mt_files(shared_data):
    root = shared_data / "mt_bench"
    return root / "question.jsonl", root / "reference_answer" / "gpt-4.jsonl"


def test_questions_and_dev_set_from_the_real_files(mt_files):
    questions = mt_bench.read_questions(mt_files[0])
    assert [q.question_id for q in questions] == list(range(81, 161))
    assert all(len(q.turns) == 2 for q in questions)
    dev = mt_bench.read_dev_set(*mt_files)
    assert len(dev) == 60  # 30 answered questions (101-130) x 2 turns
    reference = mt_bench.read_answers(mt_files[1])
    q101 = next(q for q in questions if q.question_id == 101)
    (p1, a1), (p2, a2) = dev[0], dev[1]
    assert p1 == PREAMBLE + "\n\n### Instruction: " + q101.turns[0] + "\n\n### Response:"
    assert a1 == reference[101][0] and a2 == reference[101][1]
    assert p2 == p1 + " " + a1 + "</s>### Instruction: " + q101.turns[1] + "\n\n### Response:"
    assert p1.startswith(PREAMBLE + "\n\n### Instruction: Imagine you are participating in a race")


def test_dev_loss_examples_match_the_official_tokenisation(mt_files, mistral_dir):
    # transformers' converted tokenizer splits runs of spaces differently from SentencePiece itself (which ours
    # matches, tests/test_tokenizers.py), so the oracle is asked about the examples without double spaces.
    tok = load_tokenizer(mistral_dir)
    oracle = _hf_oracle(mistral_dir)
    dev = [(p, o) for p, o in mt_bench.read_dev_set(*mt_files) if "  " not in p + o]
    assert len(dev) >= 30 and sum("</s>" in p for p, _ in dev) >= 15
    for prompt, output in dev:
        ids, n_masked = mt_bench.dev_example_ids(tok, prompt, output)
        # the official test_alpaca.py: tokenizer(input_text + " " + output_text), with BOS; the first
        # len(tokenizer(input_text + " ")) tokens masked
        assert ids == oracle(f"{prompt} {output}")["input_ids"]
        assert n_masked == len(oracle(f"{prompt} ")["input_ids"])
    turn_two = next(d for d in dev if "</s>" in d[0])
    ids, _ = mt_bench.dev_example_ids(tok, *turn_two)
    assert ids.count(tok.eos_id) == 1 and ids[0] == tok.bos_id  # the turn separator is the EOS id, not text
    # the same ids when the tokenizer itself splits "</s>" out (tokenizer_config.json now names it)
    assert mt_bench.dev_example_ids(load_tokenizer(mistral_dir), *turn_two)[0] == ids


def test_conversation_prompt_for_generation():
    assert mt_bench.conversation_prompt(["Hi?"], []) == PREAMBLE + "\n\n### Instruction: Hi?\n\n### Response:"
    assert mt_bench.conversation_prompt(["Hi?", "More?"], ["Hello."]) == (
        PREAMBLE + "\n\n### Instruction: Hi?\n\n### Response: Hello.</s>### Instruction: More?\n\n### Response:")
    with pytest.raises(ValueError, match="2 questions need 1 answers, got 0"):
        mt_bench.conversation_prompt(["a", "b"], [])
    assert mt_bench.clean_answer("  Sure, here it is.</s>\n") == "Sure, here it is."


def test_answer_file_reads_back_in_fastchat_schema(tmp_path, mt_files):
    questions = mt_bench.read_questions(mt_files[0])
    records = [mt_bench.answer_record(q.question_id, "mistral-7b-giva", [f"first {q.question_id}", "second"])
               for q in reversed(questions)]
    path = tmp_path / "model_answer" / "mistral-7b-giva.jsonl"
    mt_bench.write_answers(path, records)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80
    ids_seen = set()
    for line, q in zip(lines, questions):  # sorted by question_id, as FastChat's reorg_answer_file leaves it
        record = json.loads(line)
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert type(record["question_id"]) is int and record["question_id"] == q.question_id
        assert isinstance(record["answer_id"], str) and record["answer_id"] and record["answer_id"] not in ids_seen
        ids_seen.add(record["answer_id"])
        assert record["model_id"] == "mistral-7b-giva"
        assert isinstance(record["tstamp"], float)
        choices = record["choices"]
        assert isinstance(choices, list) and len(choices) == 1 and set(choices[0]) == {"index", "turns"}
        assert choices[0]["index"] == 0
        turns = choices[0]["turns"]
        assert isinstance(turns, list) and len(turns) == len(q.turns) and all(isinstance(t, str) for t in turns)
        assert turns == [f"first {q.question_id}", "second"]
    # FastChat's own reader keys the file by question_id and reads choices[0]["turns"]; so does ours
    assert mt_bench.read_answers(path)[81] == ("first 81", "second")
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left behind


def test_mt_bench_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text('{"question_id": 81, "category": "writing", "turns": ["a", "b"]}\n{"question_id": "82", '
                    '"category": "writing", "turns": ["a"]}\n')
    with pytest.raises(ValueError, match=r"question.jsonl, line 2: field 'question_id' is missing or not int"):
        mt_bench.read_questions(path)
    path.write_text('{"question_id": 81, "category": "writing", "turns": "a"}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'turns' must be a non-empty list of strings"):
        mt_bench.read_questions(path)
    answers = tmp_path / "gpt-4.jsonl"
    answers.write_text('{"question_id": 81, "choices": [{"index": 0}]}\n')
    with pytest.raises(ValueError, match=r"gpt-4.jsonl, line 1: field 'choices\[0\].turns'"):
        mt_bench.read_answers(answers)
    answers.write_text("not json\n")
    with pytest.raises(ValueError, match=r"gpt-4.jsonl, line 1: malformed JSON"):
        mt_bench.read_answers(answers)
    questions = [mt_bench.Question(81, "writing", ("a", "b"))]
    with pytest.raises(ValueError, match="question 81: 2 turns but 1 reference answers"):
        mt_bench.dev_set(questions, {81: ("x",)})
