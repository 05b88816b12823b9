"""export.py: a run's merged model in the publisher's layout, read unchanged by our loader and by transformers."""
import json

import pytest
import torch

import train
from eval import load_for_eval
from experiment import load_experiment
from export import export_run, shards
from models import load_model
from tiny_run import TINY_CONFIG, tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    train.main([TINY_CONFIG, *tiny_overrides(tmp, {"train.max_steps": 4})])
    return tmp / "runs/tiny_math"


def test_merged_export_loads_as_the_merged_model(run, tmp_path):
    """Ours reads the export to the merged model's logits exactly; transformers to the same within fp32."""
    out = export_run(run, tmp_path / "exported", shard_gib=0.00005)  # ~54 KB shards: the index path
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer_config.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    merged = load_for_eval(_base(run), run, "best", torch.float32, "cpu")
    with torch.no_grad():
        expected = merged(ids)
        assert torch.equal(load_model(out)(ids), expected)
        transformers = pytest.importorskip("transformers")
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        torch.testing.assert_close(hf(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(expected, load_model(_base(run))(ids))  # the adapter really is in the weights


def test_refuses_an_existing_folder_and_shards_in_order(run, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken already exists"):
        export_run(run, tmp_path / "taken")
    state = {f"w{i}": torch.zeros(256) for i in range(5)}  # 1 KiB each
    groups = shards(state, 2048)
    assert [list(g) for g in groups] == [["w0", "w1"], ["w2", "w3"], ["w4"]]


def _base(run):
    return load_experiment(run / "config.yaml").model.path
