"""The README's public-API example runs as written (on a tiny random checkpoint), so the README stays true."""
import re

import torch

from models import load_model, write_random_checkpoint
from tests.conftest import REPO


def test_readme_api_example_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    path = write_random_checkpoint(tmp_path / "ckpt", "qwen2", seed=0)
    ids = torch.randint(0, 256, (2, 10))

    def loss_fn(model, batch):
        logits = model(batch)[:, :-1]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    monkeypatch.chdir(tmp_path)
    scope = {"path": path, "prompts": [[1, 2, 3], [4, 5]], "batches": [ids], "loss_fn": loss_fn,
             "fresh_model": load_model(path)}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["new_tokens"]) == 2
    with torch.no_grad():  # the reloaded adapter reproduces the trained model's outputs once both are merged
        from giva import merge_adapters
        merge_adapters(scope["fresh_model"])
        torch.testing.assert_close(scope["fresh_model"](ids), scope["model"](ids))


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    command = readme.split("Tests (the exact command CI runs):", 1)[1].split("\n\n")[1].strip()
    assert command.endswith("python -m pytest -q") and command in (REPO / ".ci" / "run").read_text().splitlines()
