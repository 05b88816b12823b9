"""train.tensorboard: every metrics.jsonl value as a TensorBoard scalar at its step, also across a resume (the
events past the resumed step are purged, so each step has one value); without the package, one clear error."""
import json

import pytest

import train
from experiment import ConfigError
from tiny_run import TINY_CONFIG, tiny_overrides


def test_scalars_equal_metrics_jsonl_across_a_resume(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
    sets = tiny_overrides(tmp_path, {"train.tensorboard": True, "train.epochs": 1, "train.log_every": 1})
    train.main([TINY_CONFIG, *sets, "--set", "train.max_steps_this_invocation=3"])
    train.main([TINY_CONFIG, *sets, "--resume"])
    run = tmp_path / "runs" / "tiny_math"
    expected = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                expected.setdefault(key, []).append((record["step"], value))
    board = accumulator.EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    assert set(board.Tags()["scalars"]) == set(expected)
    for key, values in expected.items():
        got = [(e.step, e.value) for e in board.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in values], key  # one value per step: the resume purged nothing twice
        assert [v for _, v in got] == pytest.approx([v for _, v in values], rel=1e-6), key  # float32 events
    assert [s for s, _ in expected["loss"]] == list(range(1, 7))  # 48 examples / 8 per step, 3 before the resume


def test_without_the_package_one_clear_error(tmp_path, monkeypatch):
    real = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.tensorboard=true needs the tensorboard package"):
        train.main([TINY_CONFIG, *tiny_overrides(tmp_path, {"train.tensorboard": True})])
    assert not (tmp_path / "runs").exists()
