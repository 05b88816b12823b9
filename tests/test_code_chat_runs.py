"""The code and chat experiments through train.py and eval.py: the code_feedback and alpaca tasks, the
humaneval and mt_bench benchmarks, the lr sweep, the tiny configs end to end, the paper's dry-run budgets."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import eval as eval_script
import train
from data import code_feedback, humaneval, load_tokenizer, mt_bench
from data.alpaca_cleaned import Record, example_ids
from data.benchmarks import BENCHMARKS
from data.collate import IGNORE, build_example
from data.tasks import build_task
from experiment import ConfigError, ensure_inputs, load_experiment
from models import load_model, write_random_checkpoint
from tiny_run import REPO

CODE, CHAT = str(REPO / "configs/tiny_code.yaml"), str(REPO / "configs/tiny_chat.yaml")
MODEL_CONFIGS = REPO / "tests/model_configs"


def sets(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def code_overrides(tmp, shared, **extra):
    return {"model.path": tmp / "olmo2", "data.path": tmp / "cf.jsonl", "data.cache_dir": tmp / "cache",
            "train.out_dir": tmp / "runs", "eval.path": shared / "humaneval/HumanEval.jsonl.gz", **extra}


def chat_overrides(tmp, shared, **extra):
    return {"model.path": tmp / "mistral", "data.path": tmp / "alpaca.json", "data.cache_dir": tmp / "cache",
            "train.out_dir": tmp / "runs", "data.dev_path": shared / "mt_bench",
            "eval.path": shared / "mt_bench/question.jsonl", **extra}


# ---- tasks ----

def test_code_feedback_task_is_the_official_split_and_cut(tmp_path):
    """Rows [0, n_train) train and the next n_val validate, in file order, each the cut answer's example."""
    exp = load_experiment(CODE, [f"{k}={v}" for k, v in code_overrides(tmp_path, tmp_path, **{
        "data.n_train": 20, "data.n_val": 6, "data.synthetic": 30}).items()])
    ensure_inputs(exp)
    task = build_task(exp, exp.model.path)
    tok = load_tokenizer(exp.model.path)
    rows = code_feedback.read_rows(exp.data.path)
    assert len(task.train) == 20 and len(task.val) == 6
    for split, offset in ((task.train, 0), (task.val, 20)):
        for i in range(len(split)):
            ids, n_masked = split[i]
            want = build_example(tok, *code_feedback.example(*rows[offset + i]), exp.data.max_tokens)
            assert ids.tolist() == want[0] and n_masked == want[1]
    assert any(not a.count("```") for _, a in rows[:26])  # an answer without a fence is among them


def _right_padded_official(examples, eos):
    """The official Alpaca batch: right padding with pad = EOS, attention mask ids != EOS, positions 0..T-1."""
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), eos)
    labels = torch.full((len(examples), T), IGNORE)
    for i, (ids, n_masked) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.as_tensor(ids)
        labels[i, n_masked:len(ids)] = torch.as_tensor(ids[n_masked:])
    return input_ids, labels, input_ids != eos


def test_alpaca_left_padding_gives_the_official_right_padded_loss(tmp_path):
    """The official right-padded batch (final EOS hidden as a key) and our left-padded one: the same loss."""
    write_random_checkpoint(tmp_path, family="mistral", seed=0)
    tok, model = load_tokenizer(tmp_path), load_model(tmp_path, dtype=torch.float32, device="cpu").eval()
    records = [Record("What is 2 plus 2?", "", "4."), Record("Spell it backwards.", "garden", "nedrag"),
               Record("Name a colour.", "", "Blue is a colour of the sky.")]
    examples = [example_ids(tok, r) for r in records]
    from data.tasks import CausalLMTask
    ours_sum, ours_n = model.loss(CausalLMTask(examples, examples, tok.pad_id).collate(examples))
    input_ids, labels, attention = _right_padded_official(examples, tok.eos_id)
    T = input_ids.shape[1]
    hidden = model.forward_hidden(input_ids, positions=torch.arange(T).expand_as(input_ids), pad_mask=attention)
    logits = model.lm_head(hidden)[:, :-1].float()  # (B, T-1, V): position t predicts label t+1
    official = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")
    assert ours_n.item() == (labels[:, 1:] != IGNORE).sum().item()
    torch.testing.assert_close(ours_sum, official, rtol=1e-5, atol=1e-5)


def test_dev_loss_is_the_mean_of_per_example_means(tmp_path, shared_data):
    """alpaca's evaluate: mean over the 60 dev examples of each one's mean token loss, by an independent
    per-example cross-entropy on the model's logits."""
    exp = load_experiment(CHAT, [f"{k}={v}" for k, v in chat_overrides(tmp_path, shared_data).items()])
    ensure_inputs(exp)
    task = build_task(exp, exp.model.path)
    assert len(task.val) == 60 and task.metric is None
    model = load_model(exp.model.path, dtype=torch.float32, device="cpu")
    picks = [task.val[i] for i in (0, 1, 31, 59)]
    means = []
    with torch.no_grad():
        for ids, n_masked in picks:
            ids = torch.as_tensor(ids).unsqueeze(0)
            logits = model(ids)[0, :-1].float()
            means.append(F.cross_entropy(logits[n_masked - 1:], ids[0, n_masked:]).item())
    got = task.evaluate(model.train(), picks)["example_loss"]  # evaluate runs it in eval mode
    assert got == pytest.approx(sum(means) / len(means), rel=1e-5)
    assert model.training  # evaluate leaves the mode as it found it


# ---- benchmarks with a stand-in model ----

def test_humaneval_benchmark_scores_each_completion_in_the_sandbox(tmp_path, shared_data):
    """run(): one prompt per problem, [BOS] + the official prompt; canonical answers pass, a wrong one fails
    with its outcome recorded; pass@1 is the passed fraction."""
    write_random_checkpoint(tmp_path, family="olmo2")
    tok = load_tokenizer(tmp_path)
    problems = humaneval.read_problems(shared_data / "humaneval/HumanEval.jsonl.gz")[:4]
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        answers = [p.prompt + p.canonical_solution + "```" for p in problems]
        answers[2] = f"def {problems[2].entry_point}(*args):\n    return None\n```"
        return answers
    records, metrics = BENCHMARKS["humaneval"].run(generate, tok, shared_data / "humaneval/HumanEval.jsonl.gz", 4)
    assert seen == [[tok.bos_id] + tok.encode(humaneval.prompt(p)) for p in problems]
    assert [r["passed"] for r in records] == [True, True, False, True]
    assert records[2]["outcome"] == "assertion_failed" and records[0]["outcome"] == "passed"
    assert all(r["completion"] == humaneval.post_process(r["generation"]) for r in records)
    assert metrics["pass@1"] == 0.75 and metrics["outcomes"] == {"passed": 3, "assertion_failed": 1}


def test_mt_bench_second_turn_holds_the_models_first_answer(tmp_path, shared_data):
    write_random_checkpoint(tmp_path, family="mistral")
    tok = load_tokenizer(tmp_path)
    questions = mt_bench.read_questions(shared_data / "mt_bench/question.jsonl")[:3]
    rounds = []

    def generate(prompts):
        rounds.append(prompts)
        return [f" answer {len(rounds)}.{i} </s>" for i in range(len(prompts))]
    records, metrics = BENCHMARKS["mt_bench"].run(generate, tok, shared_data / "mt_bench/question.jsonl", 3,
                                                  model_id="m")
    assert len(rounds) == 2
    for i, q in enumerate(questions):
        first = mt_bench.conversation_prompt([q.turns[0]], [])
        second = mt_bench.conversation_prompt(list(q.turns), [f"answer 1.{i}"])
        assert rounds[0][i] == [tok.bos_id] + mt_bench.encode(tok, first)
        assert rounds[1][i] == [tok.bos_id] + mt_bench.encode(tok, second)
        assert records[i]["choices"][0]["turns"] == [f"answer 1.{i}", f"answer 2.{i}"]
    assert metrics["questions"] == 3 and metrics["turns"] == 6
    with pytest.raises(ValueError, match="no MT-Bench category"):
        BENCHMARKS["mt_bench"].run(generate, tok, shared_data / "mt_bench/question.jsonl", 0, ("poetry",), model_id="m")


def check_fastchat_answer_file(path, questions, model_id):
    """The answer file field by field as FastChat's gen_model_answer writes it and gen_judgment reads it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(questions)
    ids_seen = set()
    for line, q in zip(lines, questions):  # sorted by question_id
        record = json.loads(line)
        assert list(record) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
        assert type(record["question_id"]) is int and record["question_id"] == q.question_id
        assert isinstance(record["answer_id"], str) and record["answer_id"] not in ids_seen
        ids_seen.add(record["answer_id"])
        assert record["model_id"] == model_id and isinstance(record["tstamp"], float)
        choices = record["choices"]
        assert isinstance(choices, list) and len(choices) == 1 and list(choices[0]) == ["index", "turns"]
        assert choices[0]["index"] == 0
        turns = choices[0]["turns"]
        assert len(turns) == len(q.turns) and all(isinstance(t, str) and t == t.strip() for t in turns)
        assert not any(s in t for t in turns for s in ("<s>", "</s>", "<unk>"))


# ---- the tiny configs end to end ----

def test_tiny_code_trains_sweeps_and_scores_humaneval(tmp_path, shared_data):
    """train.py --sweep on tiny_code (no dev set: ranked by the best validation loss), then eval.py --task
    humaneval --limit 4 on the chosen run."""
    over = code_overrides(tmp_path, shared_data, **{"data.n_train": 16, "data.n_val": 8, "data.synthetic": 24,
                                                    "train.batch_size": 8, "train.micro_batch_size": 8})
    result = train.main([CODE, *sets(over), "--sweep", "train.lr=1e-3,1e-2"])
    runs = [tmp_path / "runs" / name for name in ("tiny_code_lr1e-3", "tiny_code_lr1e-2")]
    scores = [json.loads((r / "summary.json").read_text())["best_val_loss"] for r in runs]
    assert [row["score"] for row in result["rows"]] == scores
    assert result["best"]["run"] == str(runs[scores.index(min(scores))])
    assert json.loads((tmp_path / "runs/tiny_code_sweep.json").read_text()) == result
    stamps = [(r / "summary.json").stat().st_mtime_ns for r in runs]
    assert train.main([CODE, *sets(over), "--sweep", "train.lr=1e-3,1e-2"]) == result  # read back, not re-run
    assert [(r / "summary.json").stat().st_mtime_ns for r in runs] == stamps

    metrics = eval_script.main(["--task", "humaneval", "--run", str(runs[0]), "--limit", "4"])
    records = [json.loads(line) for line in (runs[0] / "humaneval_best_predictions.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in records] == [f"HumanEval/{i}" for i in range(4)]
    assert metrics["total"] == 4 and metrics["num_beams"] == 4 and sum(metrics["outcomes"].values()) == 4
    assert metrics["pass@1"] == sum(r["passed"] for r in records) / 4


@pytest.mark.slow
def test_tiny_chat_sweep_by_dev_loss_and_mt_bench_answer_file(tmp_path, shared_data):
    """train.py --sweep on tiny_chat ranks by the MT-Bench dev loss after training; eval.py --task mt_bench
    --limit 3 writes FastChat's answer file, named by the run."""
    over = chat_overrides(tmp_path, shared_data, **{"data.n_train": 16, "data.synthetic": 16,
                                                    "train.batch_size": 8})
    result = train.main([CHAT, *sets(over), "--sweep", "train.lr=1e-3,1e-2"])
    runs = [tmp_path / "runs" / name for name in ("tiny_chat_lr1e-3", "tiny_chat_lr1e-2")]
    scores = [json.loads((r / "summary.json").read_text())["val_example_loss_after"] for r in runs]
    assert [row["score"] for row in result["rows"]] == scores and result["best"]["score"] == min(scores)
    assert {row["score_key"] for row in result["rows"]} == {"val_example_loss_after"}

    eval_script.main(["--task", "mt_bench", "--run", str(runs[1]), "--limit", "3"])
    questions = mt_bench.read_questions(shared_data / "mt_bench/question.jsonl")[:3]
    check_fastchat_answer_file(runs[1] / "mt_bench_last_predictions.jsonl", questions, "tiny_chat_lr1e-2")


@pytest.mark.parametrize("spec", ["train.lr", "lr=1e-3,1e-2", "train.lr=", "train.lrr=1e-3"])
def test_sweep_spec_errors_name_it(spec):
    with pytest.raises(ConfigError, match="--sweep|train.lrr"):
        train.main([CODE, "--sweep", spec])


def test_sweep_refuses_dry_run(capsys):
    with pytest.raises(SystemExit):
        train.main([CODE, "--sweep", "train.lr=1e-3", "--dry-run"])
    assert "leave out --dry-run" in capsys.readouterr().err


# ---- the paper's budgets ----

@pytest.mark.parametrize("config, model, overrides, trainable", [
    ("olmo2_code", "olmo-2-1124-7b", [], 886_784),                                     # GiVA r=64
    ("olmo2_code", "olmo-2-1124-7b", ["adapter.init=rand"], 886_784),
    ("olmo2_code", "olmo-2-1124-7b", ["adapter.method=vera", "adapter.r=512"], 958_464),
    ("olmo2_code", "olmo-2-1124-7b", ["adapter.method=osora", "adapter.r=512"], 958_464),
    ("olmo2_code", "olmo-2-1124-7b", ["adapter.method=lora", "adapter.r=8", "adapter.alpha=16"], 14_024_704),
    ("mistral_alpaca", "mistral-7b-v0.1", [], 1_383_424),                              # GiVA r=32: 1.4M
    ("mistral_alpaca", "mistral-7b-v0.1", ["adapter.method=vera", "adapter.r=1024"], 1_605_632),  # 1.6M
    ("mistral_alpaca", "mistral-7b-v0.1", ["adapter.method=lora", "adapter.r=64", "adapter.alpha=128"],
     167_772_160),                                                                      # 167.8M
])
def test_dry_run_budgets_of_the_papers_tables(tmp_path, capsys, config, model, overrides, trainable):
    """Tables 3 and 4's counts (methods.md 7.4) from the configs' --set lines on the real config.json shapes."""
    shutil.copy(MODEL_CONFIGS / f"{model}.json", tmp_path / "config.json")
    train.main([str(REPO / f"configs/{config}.yaml"), *sets({"model.path": tmp_path}),
                *[a for o in overrides for a in ("--set", o)], "--dry-run"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trainable_params"] == trainable
