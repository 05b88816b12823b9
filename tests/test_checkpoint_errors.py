"""Every bad checkpoint is a clear error that names the file and the key or field at fault."""
import json
import re
import shutil

import pytest
import torch

from models import load_config, load_model, write_random_checkpoint
from data.safetensors_io import load_safetensors, save_safetensors


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory):
    return {fam: write_random_checkpoint(tmp_path_factory.mktemp(fam), family=fam) for fam in ("llama", "qwen2")}


@pytest.fixture
def ckpt(_pristine, tmp_path):
    """A fresh copy of a tiny llama checkpoint that the test may damage."""
    return shutil.copytree(_pristine["llama"], tmp_path / "ckpt")


def _edit_weights(path, edit):
    tensors, meta = load_safetensors(path / "model.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    edit(tensors)
    save_safetensors(path / "model.safetensors", tensors, meta)


def _edit_config(path, edit):
    raw = json.loads((path / "config.json").read_text())
    edit(raw)
    (path / "config.json").write_text(json.dumps(raw))


def test_missing_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'") as e:
        load_model(ckpt)
    assert str(ckpt) in str(e.value)


def test_unexpected_tensor_without_table_entry(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mystery\.weight'"):
        load_model(ckpt)


def test_unexpected_tensor_the_config_does_not_have(ckpt):
    """A q_proj bias is a known key, but this llama config.json has attention_bias false."""
    _edit_weights(ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        load_model(ckpt)


def test_tensor_beyond_the_layer_count(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.layers.7.input_layernorm.weight": torch.ones(64)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.7\.input_layernorm\.weight'"):
        load_model(ckpt)


def test_misshaped_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 64)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' "
                                         r"has shape \(16, 64\), the model expects \(32, 64\)"):
        load_model(ckpt)


def test_truncated_file(ckpt):
    file = ckpt / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated file: tensor '.+'"):
        load_model(ckpt)


def test_corrupt_header(ckpt):
    file = ckpt / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:20] = b"#" * 12
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt header"):
        load_model(ckpt)


def test_truncated_bin(ckpt):
    tensors, _ = load_safetensors(ckpt / "model.safetensors")
    torch.save({k: v.clone() for k, v in tensors.items()}, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    file = ckpt / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: cannot read PyTorch weights, truncated or corrupt"):
        load_model(ckpt)


def test_shard_missing_a_tensor_its_index_lists(ckpt):
    tensors, _ = load_safetensors(ckpt / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    for shard, ks in shards.items():
        save_safetensors(ckpt / shard, {k: tensors[k].clone() for k in ks if k != keys[-1]})
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"model-00002-of-00002\.safetensors: missing tensor '{keys[-1]}'"):
        load_model(ckpt)


def test_no_weight_files(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights found \(looked for model\.safetensors\.index\.json"):
        load_model(ckpt)


def test_missing_config_json(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: config\.json not found"):
        load_model(ckpt)


def test_config_json_not_json(ckpt):
    (ckpt / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_config(ckpt)


def test_unsupported_family(ckpt):
    _edit_config(ckpt, lambda c: c.update(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    with pytest.raises(ValueError, match=r"config\.json: unsupported model family \(model_type='gpt2'"):
        load_model(ckpt)


def test_family_from_architectures_when_model_type_absent(ckpt):
    _edit_config(ckpt, lambda c: c.pop("model_type"))
    assert load_config(ckpt).n_layers == 2


@pytest.mark.parametrize("rope", [
    {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
    {"type": "yarn", "factor": 4.0},
    {"type": "dynamic", "factor": 2.0},
])
def test_unsupported_rope_scaling(ckpt, rope):
    _edit_config(ckpt, lambda c: c.update(rope_scaling=rope))
    kind = rope.get("rope_type", rope.get("type"))
    with pytest.raises(ValueError, match=rf"config\.json: unsupported rope_scaling type '{kind}'"):
        load_model(ckpt)


def test_rope_scaling_missing_its_fields(ckpt):
    _edit_config(ckpt, lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    with pytest.raises(ValueError, match=r"config\.json: rope_scaling type 'llama3' lacks \['low_freq_factor'"):
        load_config(ckpt)


def test_missing_required_config_field(ckpt):
    _edit_config(ckpt, lambda c: c.pop("intermediate_size"))
    with pytest.raises(ValueError, match=r"config\.json: missing required field 'intermediate_size'"):
        load_config(ckpt)


def test_unsupported_activation(ckpt):
    _edit_config(ckpt, lambda c: c.update(hidden_act="gelu"))
    with pytest.raises(ValueError, match=r"config\.json: unsupported hidden_act 'gelu'"):
        load_config(ckpt)


def test_tied_embeddings_without_lm_head_load_and_share(_pristine):
    """Qwen2-0.5B's layout: tie_word_embeddings true and no lm_head.weight in the file."""
    keys = load_safetensors(_pristine["qwen2"] / "model.safetensors")[0].keys()
    assert "lm_head.weight" not in keys
    model = load_model(_pristine["qwen2"])
    assert model.lm_head.weight is model.embed_tokens.weight


def test_tied_lm_head_stored_but_different(_pristine, tmp_path):
    ckpt = shutil.copytree(_pristine["qwen2"], tmp_path / "ckpt")
    _edit_weights(ckpt, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1}))
    with pytest.raises(ValueError, match=r"tensor 'lm_head\.weight' differs from the weight it is tied to"):
        load_model(ckpt)


def test_untied_lm_head_missing(ckpt):
    _edit_weights(ckpt, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'lm_head\.weight'"):
        load_model(ckpt)


def test_stored_rotary_inv_freq_is_ignored(ckpt):
    """Llama-2's published shards hold rotary_emb.inv_freq (saved by transformers < 4.31); it is computed."""
    with torch.no_grad():
        reference = load_model(ckpt)(torch.arange(10)[None])
    _edit_weights(ckpt, lambda t: t.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8)
                                            for i in range(2)}))
    with torch.no_grad():
        torch.testing.assert_close(load_model(ckpt)(torch.arange(10)[None]), reference, atol=0, rtol=0)


@pytest.mark.parametrize("family, key, value, words", [
    ("llama", "num_attention_heads", 0, "'num_attention_heads' must be a positive integer"),
    ("llama", "num_key_value_heads", 0, "'num_key_value_heads' must be a positive integer"),
    ("llama", "num_key_value_heads", 3, "must be a multiple of 'num_key_value_heads' (3)"),
    ("llama", "intermediate_size", -8, "'intermediate_size' must be a positive integer"),
    ("llama", "max_position_embeddings", 0, "'max_position_embeddings' must be a positive integer"),
    ("qwen2", "hidden_size", 2.5, "'hidden_size' must be a positive integer"),
    ("dinov2", "num_attention_heads", 0, "'num_attention_heads' must be a positive integer"),
    ("dinov2", "patch_size", -1, "'patch_size' must be a positive integer"),
])
def test_config_json_values_are_checked(tmp_path, family, key, value, words):
    """Sizes that cannot work are a ValueError naming config.json and the key, before any tensor is read."""
    ckpt = write_random_checkpoint(tmp_path / "c", family=family)
    raw = json.loads((ckpt / "config.json").read_text())
    raw[key] = value
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=re.escape(words)) as e:
        load_model(ckpt)
    assert "config.json" in str(e.value)
