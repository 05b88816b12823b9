"""Commonsense data: LLM-Adapters records (real files), Alpaca prompts, the HF-exact validation split,
training examples (loss on the response only), the eight tasks' answer extraction and scoring."""
import json

import pytest
import torch

from data.collate import collate_left_padded
from data.commonsense import (TASKS, Record, extract_answer, prompt, read_records, read_test_set, score_task,
                              split_train_val, summarise, generation_prompt_ids, train_val_examples, training_examples)
from data.tokenizer import load_tokenizer

# SOURCES.md: record counts of the shared LLM-Adapters files
TRAIN_COUNTS = {"boolq": 9427, "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}
TEST_COUNTS = {"boolq": 3270, "piqa": 1838, "siqa": 1954, "winogrande": 1267, "arc_e": 2376, "arc_c": 1172,
               "obqa": 500}


class ByteTokenizer:
    """Bytes as ids 0..255; BOS 256, EOS 257, no pad."""
    bos_id, eos_id, pad_id = 256, 257, None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


RECORD = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}


# --- reading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(TRAIN_COUNTS))
def test_real_train_files_read_and_their_outputs_state_the_answer(shared_data, folder):
    records = read_records(shared_data / "commonsense" / folder / "train.json")
    assert len(records) == TRAIN_COUNTS[folder]
    assert all(r.output == f"the correct answer is {r.answer}" for r in records)
    assert all(r.input == "" for r in records)  # LLM-Adapters puts everything in the instruction


@pytest.mark.parametrize("name", sorted(TEST_COUNTS))
def test_real_test_sets_score_their_gold_outputs_perfectly(shared_data, name):
    """Each answer is a label of its task's regex, and the gold output extracts to it: 100% accuracy."""
    records = read_test_set(shared_data / "commonsense", name)
    assert len(records) == TEST_COUNTS[name]
    assert all(TASKS[name].pattern.fullmatch(r.answer) for r in records)
    rows, metrics = score_task(name, records, [r.output for r in records])
    assert metrics == {"accuracy": 1.0, "correct": len(records), "total": len(records)}
    # and a generation naming another label of the task scores 0
    wrong = {"true": "false", "false": "true", "solution1": "solution2", "solution2": "solution1",
             "option1": "option2", "option2": "option1"}
    other = [f"the correct answer is {wrong.get(r.answer, 'answer1' if r.answer != 'answer1' else 'answer2')}"
             for r in records]
    assert score_task(name, records, other)[1]["correct"] == 0


def test_hellaswag_reader_on_a_file_in_the_llm_adapters_format(tmp_path):
    # LLM-Adapters' dataset/hellaswag/test.json record shape (its test file is not in shared/data)
    records = [{"instruction": "Please choose the correct ending to complete the given sentence: Removing ice from "
                               "car: Then, the man writes over the snow covering the window of a car, and a woman "
                               "wearing winter clothes smiles. then\n\nEnding1: , the man adds wax to the windshield "
                               "and cuts it. Ending2: , a person board a ski lift, while two men supporting the head "
                               "of the person wearing winter clothes snow as the we girls sled. Ending3: , the man "
                               "puts on a christmas coat, knitted with netting. Ending4: , the man continues removing "
                               "the snow on his car.\n\nAnswer format: ending1/ending2/ending3/ending4",
                "input": "", "output": "the correct answer is ending4", "answer": "ending4"},
               {"instruction": "Please choose the correct ending ...\n\nAnswer format: ending1/ending2/ending3/ending4",
                "input": "", "output": "the correct answer is ending1", "answer": "ending1"}]
    (tmp_path / "hellaswag").mkdir()
    write_json(tmp_path / "hellaswag" / "test.json", records)
    got = read_test_set(tmp_path, "hellaswag")
    assert got == [Record(**r) for r in records]
    rows, metrics = score_task("hellaswag", got, ["the correct answer is ending4", "the correct answer is Ending1"])
    assert [row["prediction"] for row in rows] == ["ending4", ""]
    assert metrics["accuracy"] == 0.5


@pytest.mark.parametrize("content, message", [
    ("[{", "not valid JSON"),
    (json.dumps({"instruction": "x"}), "expected a JSON array"),
    (json.dumps([RECORD, "text"]), "record 1 is a str"),
    (json.dumps([RECORD, RECORD, {k: v for k, v in RECORD.items() if k != "answer"}]),
     "record 2 has no field 'answer'"),
    (json.dumps([{**RECORD, "input": None}]), "record 0 field 'input' is a NoneType"),
])
def test_malformed_files_name_the_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as e:
        read_records(path)
    assert str(path) in str(e.value)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="social_i_qa"):
        read_test_set(tmp_path, "siqa")
    with pytest.raises(ValueError, match="unknown commonsense task 'mmlu'"):
        read_test_set(tmp_path, "mmlu")


# --- prompts and training examples -----------------------------------------------------------------------


def test_alpaca_prompts_are_the_methods_md_strings():
    without = Record("Say hi.", "", "hi", "hi")
    assert prompt(without) == ("Below is an instruction that describes a task. Write a response that appropriately "
                               "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    with_input = Record("Translate.", "bonjour", "hello", "hello")
    assert prompt(with_input) == ("Below is an instruction that describes a task, paired with an input that provides "
                                  "further context. Write a response that appropriately completes the request.\n\n"
                                  "### Instruction:\nTranslate.\n\n### Input:\nbonjour\n\n### Response:\n")


def test_training_examples_target_the_output_and_eos_only(tmp_path):
    tok = ByteTokenizer()
    path = write_json(tmp_path / "c15k.json", [RECORD, {**RECORD, "input": "ctx"}])
    examples = training_examples(tok, read_records(path), max_tokens=512)
    batch = collate_left_padded(examples, pad_id=tok.eos_id)
    for row in range(2):
        targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert targets == list(RECORD["output"].encode()) + [tok.eos_id]
    first = examples[0][0].tolist()
    assert first == [tok.bos_id] + list((prompt(read_records(path)[0]) + RECORD["output"]).encode()) + [tok.eos_id]
    # 512 tokens: the last ones are kept, the target still whole
    long = Record("x" * 600, "", "the correct answer is false", "false")
    ids, n_masked = training_examples(tok, [long])[0]
    assert len(ids) == 512 and ids[n_masked:].tolist() == list(long.output.encode()) + [tok.eos_id]


def test_training_examples_with_the_real_qwen2_tokenizer(shared_data, tmp_path):
    """Qwen2's pre-tokeniser never merges across "### Response:\\n" and the output, so the targeted tokens decode
    to exactly the output (then EOS)."""
    src = shared_data / "tokenizers/qwen2"
    for name in ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"]:
        (tmp_path / name).symlink_to(src / name)
    (tmp_path / "config.json").symlink_to(src / "config_qwen2-1.5b-instruct.json")
    tok = load_tokenizer(tmp_path)
    records = read_records(shared_data / "commonsense/ARC-Challenge/train.json")[:20]
    for r, (ids, n_masked) in zip(records, training_examples(tok, records)):
        assert ids[-1] == tok.eos_id and tok.decode(ids[n_masked:-1].tolist()) == r.output
        assert ids[:n_masked].tolist() == generation_prompt_ids(tok, r)


# --- the validation split ---------------------------------------------------------------------------------


def test_split_is_hf_train_test_split_seed_42(shared_data):
    records = read_records(shared_data / "commonsense/boolq/train.json")
    train, val = split_train_val(records, n_val=120, seed=42)
    assert len(val) == 120 and len(train) == len(records) - 120
    index = {id(r): i for i, r in enumerate(records)}
    # golden: np.random.default_rng(42).permutation(9427) starts 3429, 4320, 3143 and ends 4802, 5668, 5729
    assert [index[id(r)] for r in val[:3]] == [3429, 4320, 3143]
    assert [index[id(r)] for r in train[-3:]] == [4802, 5668, 5729]
    assert sorted(index[id(r)] for r in train + val) == list(range(len(records)))
    datasets = pytest.importorskip("datasets", reason="HF datasets is the oracle for train_test_split")
    hf = datasets.Dataset.from_list([r.__dict__ for r in records]).train_test_split(test_size=120, seed=42)
    assert [Record(**row) for row in hf["test"]] == val
    assert [Record(**row) for row in hf["train"]] == train


def test_train_val_examples_and_split_errors(tmp_path):
    path = write_json(tmp_path / "c.json", [{**RECORD, "answer": str(i)} for i in range(10)])
    train, val = train_val_examples(path, ByteTokenizer(), n_val=3)
    assert (len(train), len(val)) == (7, 3) and isinstance(train[0][0], torch.Tensor)
    with pytest.raises(ValueError, match="n_val = 10"):
        split_train_val(read_records(path), n_val=10)


# --- extraction and scoring --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, generation, expected", [
    # BoolQ
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "  the correct answer is false\n\n### Instruction:\nPlease answer", "false"),  # trailing text
    ("boolq", "the correct answer is false, not true", "false"),  # first label wins
    ("boolq", "the correct answer is True", ""),  # case-sensitive, as the official regex
    ("boolq", "the statement is untrue", "true"),  # no word boundaries in the official regex
    ("boolq", "the correct answer is", ""),
    # PIQA
    ("piqa", "the correct answer is solution2", "solution2"),
    ("piqa", "the correct answer is solution1 because solution2 would spill", "solution1"),
    ("piqa", "the correct answer is Solution1", ""),
    ("piqa", "the correct answer is solution3", ""),
    # SIQA, ARC-e, ARC-c, OBQA
    ("siqa", "the correct answer is answer3", "answer3"),
    ("arc_e", "the correct answer is answer2.\nAnswer1 is wrong", "answer2"),
    ("arc_c", "the correct answer is answer12", "answer1"),  # the "answer12" trap reads as answer1
    ("arc_c", "the correct answer is Answer4", ""),
    ("obqa", "answer4 or answer1", "answer4"),
    ("obqa", "the correct answer is answer6", ""),
    ("siqa", "the correct answer is answer5", "answer5"),  # the shared regex allows 5 labels
    # HellaSwag
    ("hellaswag", "the correct answer is ending3 ending1", "ending3"),
    ("hellaswag", "the correct answer is ending5", ""),
    ("hellaswag", "the correct answer is Ending2", ""),
    # WinoGrande
    ("winogrande", "the correct answer is option2", "option2"),
    ("winogrande", "the correct answer is option1option2", "option1"),
    ("winogrande", "the correct answer is Sarah", ""),
    ("winogrande", "", ""),
])
def test_extraction_first_official_match(name, generation, expected):
    assert extract_answer(name, generation) == expected


def test_score_and_summary():
    boolq = [Record("q", "", "the correct answer is true", a) for a in ("true", "false", "true", "false")]
    rows, metrics = score_task("boolq", boolq, ["true", "true", "the answer: true", "nothing"])
    assert [r["prediction"] for r in rows] == ["true", "true", "true", ""]
    assert [r["correct"] for r in rows] == [True, False, True, False]
    assert metrics == {"accuracy": 0.5, "correct": 2, "total": 4}
    assert rows[1] == {"task": "boolq", "index": 1, "instruction": "q", "input": "", "generation": "true",
                       "prediction": "true", "answer": "false", "correct": False}
    piqa = [Record("q", "", "", "solution1")]
    _, piqa_metrics = score_task("piqa", piqa, ["solution1"])
    summary = summarise({"boolq": metrics, "piqa": piqa_metrics})
    assert summary["average"] == pytest.approx(0.75)  # unweighted over tasks, not over examples (3/5)
    with pytest.raises(ValueError, match="2 records and 1 generations"):
        score_task("boolq", boolq[:2], ["true"])


# --- the benchmark (data/benchmarks.py "commonsense") ----------------------------------------------------


def _test_folder(tmp_path, tasks):
    """<tmp>/<task folder>/test.json for each of `tasks` ({name: [answers]}), records in the LLM-Adapters shape."""
    for name, answers in tasks.items():
        folder = tmp_path / TASKS[name].directory
        folder.mkdir()
        write_json(folder / "test.json", [{**RECORD, "instruction": f"{name} question {i}", "answer": a,
                                           "output": f"the correct answer is {a}"} for i, a in enumerate(answers)])
    return tmp_path


def test_benchmark_runs_the_chosen_tasks_in_one_generate_call(tmp_path):
    from data.benchmarks import BENCHMARKS
    bench = BENCHMARKS["commonsense"]
    assert bench.defaults == {"path": "../shared/data/commonsense", "max_new_tokens": 32, "num_beams": 4}
    path = _test_folder(tmp_path, {"boolq": ["true", "false", "true"], "hellaswag": ["ending2", "ending4", "ending1"],
                                   "piqa": ["solution1"]})
    tok, calls = ByteTokenizer(), []

    def generate(prompts):  # echoes the question's index: right for index 0 of each task only
        calls.append(prompts)
        texts = []
        for ids in prompts:
            text = tok.decode(ids[1:])
            name = "boolq" if "boolq question" in text else "hellaswag"
            texts.append({"boolq": "the correct answer is true false",
                          "hellaswag": "ending2 or ending4"}[name] + (" " if "question 0" in text else " x"))
        return texts

    records, metrics = bench.run(generate, tok, str(path), 2, ("hellaswag", "boolq"))
    assert len(calls) == 1 and len(calls[0]) == 4  # limit 2 per task, both tasks in one batch
    expect_prompts = [generation_prompt_ids(tok, r) for name in ("hellaswag", "boolq")
                      for r in read_test_set(path, name)[:2]]
    assert calls[0] == expect_prompts
    assert [(r["task"], r["index"], r["prediction"], r["answer"], r["correct"]) for r in records] == [
        ("hellaswag", 0, "ending2", "ending2", True), ("hellaswag", 1, "ending2", "ending4", False),
        ("boolq", 0, "true", "true", True), ("boolq", 1, "true", "false", False)]
    assert records[0]["generation"] == "ending2 or ending4 "
    assert metrics == {"tasks": {"hellaswag": {"accuracy": 0.5, "correct": 1, "total": 2},
                                 "boolq": {"accuracy": 0.5, "correct": 1, "total": 2}}, "average": 0.5}


def test_benchmark_errors_name_the_task(tmp_path):
    from data.commonsense import run
    path = _test_folder(tmp_path, {"boolq": ["true"]})
    never = lambda prompts: pytest.fail("generate called before every test file was read")  # noqa: E731
    with pytest.raises(FileNotFoundError, match=r"commonsense task 'piqa': no test file .*piqa/test\.json"):
        run(never, ByteTokenizer(), str(path), 0, ("boolq", "piqa"))
    with pytest.raises(FileNotFoundError, match="commonsense task 'piqa'"):
        run(never, ByteTokenizer(), str(path), 0, ())  # default: all eight tasks
    with pytest.raises(ValueError, match="unknown commonsense task 'mmlu'"):
        run(never, ByteTokenizer(), str(path), 0, ("mmlu",))
    with pytest.raises(ValueError, match="named twice"):
        run(never, ByteTokenizer(), str(path), 0, ("boolq", "boolq"))


def test_commonsense_training_task_through_tasks_py(tmp_path):
    from data.tasks import TASKS as TRAINING_TASKS
    from experiment import experiment_from_dict
    path = write_json(tmp_path / "c15k.json", [{**RECORD, "instruction": f"question {i}"} for i in range(30)])
    exp = experiment_from_dict({"data": {"task": "commonsense", "path": str(path), "n_val": 5, "n_train": 20,
                                         "max_tokens": 512}, "adapter": {"targets": ["q_proj"]}})
    task = TRAINING_TASKS["commonsense"](exp, ByteTokenizer(), None)
    train, val = split_train_val(read_records(path), 5, 42)
    assert len(task.train) == 20 and len(task.val) == 5
    ids = lambda examples: [t[0].tolist() for t in examples]  # noqa: E731
    assert ids(task.val) == ids(training_examples(ByteTokenizer(), val))
    assert ids(task.train) == ids(training_examples(ByteTokenizer(), train[:20]))  # the first n_train of the rest
    assert task.collate(task.train[:2])["input_ids"].shape[0] == 2
