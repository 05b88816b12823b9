"""runs.py: finished runs side by side, read from their config.yaml and summary.json."""
import pytest

import runs
import train
from tiny_run import TINY_CONFIG, tiny_overrides


def test_table_of_finished_and_unfinished_runs(tmp_path):
    sets = tiny_overrides(tmp_path, {"train.max_steps": 2})
    train.main([TINY_CONFIG, *sets])
    train.main([TINY_CONFIG, *sets, "--set", "train.name=lora", "--set", "adapter.method=lora",
                "--set", "adapter.alpha=16"])
    (tmp_path / "runs/half").mkdir()
    (tmp_path / "runs/half/config.yaml").write_text("adapter: {method: vera, r: 4}\n")
    text = runs.main([str(tmp_path / "runs")])
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and "best_val_loss" in lines[0]
    lora, tiny = [line for line in lines if "/lora |" in line], [line for line in lines if "/tiny_math |" in line]
    assert "| lora | 8 |" in lora[0] and "| giva | 8 | secsv |" in tiny[0]
    assert "not finished" in next(line for line in lines if "/half |" in line)
    with pytest.raises(FileNotFoundError, match="no run directories"):
        runs.main([str(tmp_path / "ckpt")])  # a checkpoint folder, no run


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="runs.py --plot needs matplotlib (the plots extra)")
    train.main([TINY_CONFIG, *tiny_overrides(tmp_path, {"train.max_steps": 2})])
    runs.main([str(tmp_path / "runs"), "--plot", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
