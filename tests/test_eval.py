"""eval.py: GSM8K scoring through batched generation, and the --model command line."""
import json

import pytest
import torch

import eval as eval_script
from data import load_tokenizer
from data.gsm8k import read_problems
from data.synthetic_math import write_gsm8k_jsonl
from models import Decoder, write_random_checkpoint
from models.random_checkpoint import write_tokenizer


def test_scoring_keeps_each_generation_with_its_problem(tmp_path, monkeypatch):
    """A scripted generate answers from the prompt it is given: right for even problems, a thousands-comma
    answer for one, nothing for the rest; problems are batched sorted by length, so order must be restored."""
    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    write_gsm8k_jsonl(tmp_path / "g.jsonl", 7, seed=5)
    problems = read_problems(tmp_path / "g.jsonl")
    by_prompt = {f"Q: {p.question}\nA: ": (i, p) for i, p in enumerate(problems)}
    seen_prompts = []

    def scripted(model, prompts, max_new_tokens, num_beams, eos_id, pad_id):
        assert max_new_tokens == 9 and num_beams == 1 and len(prompts) <= 3
        out = []
        for ids in prompts:
            assert ids[0] == tok.bos_id
            i, p = by_prompt[tok.decode(ids[1:])]
            seen_prompts.append(i)
            text = f"so #### {int(p.target):,}\nThe answer is" if i % 2 == 0 else "I do not know"
            out.append(tok.encode(text) + [eos_id])
        return out

    monkeypatch.setattr(eval_script, "generate", scripted)
    ev = eval_script.EvalSection(task="gsm8k", path=str(tmp_path / "g.jsonl"), max_new_tokens=9, batch_size=3)
    records, metrics = eval_script.evaluate_benchmark(None, tok, ev)
    assert sorted(seen_prompts) == list(range(7))
    assert [r["correct"] for r in records] == [i % 2 == 0 for i in range(7)]
    assert [r["prediction"] for r in records[::2]] == [p.target for p in problems[::2]]
    assert all(r["prediction"] is None for r in records[1::2])
    assert records[1]["generation"] == "I do not know"  # decoded without the EOS
    assert metrics["accuracy"] == pytest.approx(4 / 7) and metrics["total"] == 7


def test_empty_gsm8k_file_is_an_error(tmp_path):
    write_tokenizer(tmp_path)
    (tmp_path / "g.jsonl").write_text("\n")
    ev = eval_script.EvalSection(task="gsm8k", path=str(tmp_path / "g.jsonl"))
    with pytest.raises(ValueError, match="g.jsonl: no GSM8K problems"):
        eval_script.evaluate_benchmark(None, load_tokenizer(tmp_path), ev)


def test_bare_model_command_line(tmp_path, capsys):
    torch.set_num_threads(1)  # tiny matrices; the autouse fixture restores the thread count
    ckpt = write_random_checkpoint(tmp_path / "ckpt", family="llama", seed=1)
    write_gsm8k_jsonl(tmp_path / "g.jsonl", 5)
    out = tmp_path / "preds.jsonl"
    metrics = eval_script.main(["--task", "gsm8k", "--model", str(ckpt), "--data", str(tmp_path / "g.jsonl"),
                                "--limit", "3", "--batch-size", "2", "--max-new-tokens", "40", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and [r["target"] for r in records] == [p.target for p in read_problems(tmp_path / "g.jsonl")[:3]]
    assert all(isinstance(r["generation"], str) and r["correct"] is False for r in records)  # random weights
    saved = json.loads((tmp_path / "preds.jsonl.metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] == 0.0 and saved["model"] == str(ckpt)
    assert saved["max_new_tokens"] == 40 and saved["new_tokens_per_s"] > 0
    err = capsys.readouterr().err
    assert "generate:" in err and "/3 [" in err  # eval.py's progress bar over the 3 prompts


def test_compile_flag_reaches_the_model(tmp_path, monkeypatch):
    """`--compile` calls Decoder.compile_blocks before generating, `--no-compile` does not (compiled
    generation's numerics are tested in tests/test_generate.py; here the call is recorded, not made)."""
    torch.set_num_threads(1)
    ckpt = write_random_checkpoint(tmp_path / "ckpt", family="llama", seed=1)
    write_gsm8k_jsonl(tmp_path / "g.jsonl", 2)
    calls = []
    monkeypatch.setattr(Decoder, "compile_blocks", lambda self: calls.append(type(self)))
    for flag, expect in (("--no-compile", []), ("--compile", [Decoder])):
        eval_script.main(["--task", "gsm8k", "--model", str(ckpt), "--data", str(tmp_path / "g.jsonl"),
                          "--max-new-tokens", "4", "--out", str(tmp_path / "p.jsonl"), flag])
        assert calls == expect
