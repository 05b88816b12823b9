"""write_random_checkpoint writes the publisher layout: our loader and HF's read it to the same model."""
import json

import pytest
import torch

from models import DecoderConfig, load_config, load_model, write_random_checkpoint
from data import load_tokenizer
from models.random_checkpoint import BOS_ID, EOS_ID, PAD_ID, bytes_to_unicode
from tiny_run import REPO

FAMILIES = ["llama", "mistral", "qwen2", "phi3", "olmo2"]
IDS = (torch.arange(3, 19)[None] * 7) % 259  # (1, 16): a fixed prompt longer than the sliding window (8)

# Golden logits[0, -1, :4] of write_random_checkpoint(path, family, seed=0) on IDS, fp32 on CPU.
# Origin: computed once by our own load_model (torch 2.13, CPU) and cross-checked against HF
# transformers 5.24 loading the same directory (max |diff| of all logits <= 5e-7; that check is
# test_random_checkpoint_matches_hf below). Mistral and Phi-3 coincide: same tiny config and random
# draws, Phi-3's are merely stored fused.
GOLDEN = {
    "llama": [0.03450004756450653, -0.1467319130897522, 0.0835011675953865, 0.03861869126558304],
    "mistral": [-0.09251036494970322, -0.12110387533903122, 0.09200844168663025, -0.05249474197626114],
    "qwen2": [0.15280263125896454, -0.15562960505485535, 0.16092348098754883, 0.00964887160807848],
    "phi3": [-0.09251036494970322, -0.12110387533903122, 0.09200844168663025, -0.05249474197626114],
    "olmo2": [-0.3736506402492523, 0.20629344880580902, -0.12342026829719543, 0.05631765350699425],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {fam: write_random_checkpoint(tmp_path_factory.mktemp(fam), family=fam) for fam in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_logits(checkpoints, family):
    with torch.no_grad():
        logits = load_model(checkpoints[family])(IDS)
    torch.testing.assert_close(logits[0, -1, :4], torch.tensor(GOLDEN[family]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_checkpoint_matches_hf(checkpoints, family):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[family], attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(load_model(checkpoints[family])(IDS), hf(IDS).logits, atol=1e-4, rtol=0)


def test_config_round_trip_and_family_flags(checkpoints):
    cfgs = {fam: load_config(path) for fam, path in checkpoints.items()}
    assert cfgs["qwen2"].qkv_bias and cfgs["qwen2"].tie_embeddings and not cfgs["qwen2"].o_bias
    assert cfgs["olmo2"].qk_norm and cfgs["olmo2"].post_norm
    assert cfgs["mistral"].sliding_window == cfgs["phi3"].sliding_window == 8
    assert cfgs["llama"].sliding_window is None and cfgs["llama"].n_kv_heads == 2
    raw = json.loads((checkpoints["phi3"] / "config.json").read_text())
    assert raw["model_type"] == "phi3" and raw["architectures"] == ["Phi3ForCausalLM"]


def test_phi3_is_stored_fused(checkpoints):
    from data.safetensors_io import SafetensorsFile
    keys = SafetensorsFile(checkpoints["phi3"] / "model.safetensors").keys()
    assert "model.layers.0.self_attn.qkv_proj.weight" in keys and "model.layers.0.mlp.gate_up_proj.weight" in keys
    assert not any("q_proj" in k or "gate_proj" in k for k in keys)


def test_overrides_and_their_errors(tmp_path):
    path = write_random_checkpoint(tmp_path / "a", family="llama", n_layers=1, dim=32, n_heads=2, n_kv_heads=1,
                                   head_dim=16, rope_scaling={"type": "linear", "factor": 2.0})
    cfg = load_config(path)
    assert (cfg.n_layers, cfg.dim, cfg.rope_scaling) == (1, 32, {"type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match=r"unknown DecoderConfig field\(s\) \['n_layer'\]"):
        write_random_checkpoint(tmp_path / "b", n_layer=1)
    with pytest.raises(ValueError, match=r"family 'llama' cannot express this config"):
        write_random_checkpoint(tmp_path / "c", family="llama", qk_norm=True)
    with pytest.raises(ValueError, match=r"unknown family 'gpt2'"):
        write_random_checkpoint(tmp_path / "d", family="gpt2")
    with pytest.raises(ValueError, match=r"vocab_size 100 is smaller than the tokenizer's 259 tokens"):
        write_random_checkpoint(tmp_path / "e", vocab_size=100)


def test_bfloat16_checkpoint(tmp_path):
    path = write_random_checkpoint(tmp_path, family="qwen2", dtype=torch.bfloat16)
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = load_model(path, dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.isfinite(model(IDS)).all()


def test_tokenizer_files(checkpoints):
    path = checkpoints["llama"]
    vocab = json.loads((path / "vocab.json").read_text())
    assert [vocab[c] for c in bytes_to_unicode().values()] == list(range(256))
    assert (vocab["<s>"], vocab["</s>"], vocab["<pad>"]) == (BOS_ID, EOS_ID, PAD_ID)
    assert (path / "merges.txt").read_text().startswith("#version: 0.2")
    assert load_config(path).vocab_size >= len(vocab)
    gen = json.loads((path / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (BOS_ID, EOS_ID, PAD_ID)


def test_tokenizer_loads_in_hf(checkpoints):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoints["llama"])
    text = "héllo wörld\n"
    assert tok(text, add_special_tokens=False).input_ids == [list(bytes_to_unicode()).index(b) for b in text.encode()]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)


def test_meta_build_counts_parameters():
    cfg = DecoderConfig(vocab_size=100352, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                        hidden_dim=11008, qk_norm=True, post_norm=True)  # OLMo-2-7B's shape
    from models import Decoder
    with torch.device("meta"):
        model = Decoder(cfg)
    # embed + lm_head: 2*V*D; per layer: 4*D*D attention + 3*D*F MLP + q/k norms 2*D + 2 norms 2*D; final norm D
    D, F, V, L = 4096, 11008, 100352, 32
    assert sum(p.numel() for p in model.parameters()) == 2 * V * D + L * (4 * D * D + 3 * D * F + 4 * D) + D


def test_sharded_bin_checkpoint_loads_the_same(checkpoints, tmp_path):
    """PyTorch shards through pytorch_model.bin.index.json (the older publisher layout)."""
    from data.safetensors_io import load_safetensors
    src = checkpoints["phi3"]
    tensors, _ = load_safetensors(src / "model.safetensors")
    keys = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for shard, ks in shards.items():
        torch.save({k: tensors[k].clone() for k in ks}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(IDS), load_model(src)(IDS), atol=0, rtol=0)


def test_first_use_interrupted_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A run stopped while its random checkpoint is written leaves no config.json (so the next run writes the
    checkpoint again, whole) and no temporary folder."""
    import models.random_checkpoint as rc
    from experiment import ensure_inputs, load_experiment

    exp = load_experiment(REPO / "configs/tiny_math.yaml", [f"model.path={tmp_path / 'ckpt'}",
                                                             f"data.path={tmp_path / 'm.json'}",
                                                             f"eval.path={tmp_path / 'g.jsonl'}"])
    real = rc.write_tokenizer

    def killed(path):
        raise KeyboardInterrupt  # what a stop between the weights and the tokenizer looks like to the writer

    monkeypatch.setattr(rc, "write_tokenizer", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_inputs(exp)
    assert not (tmp_path / "ckpt" / "config.json").exists() and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(rc, "write_tokenizer", real)
    ensure_inputs(exp)
    assert load_model(tmp_path / "ckpt") is not None and load_tokenizer(tmp_path / "ckpt").eos_id is not None
