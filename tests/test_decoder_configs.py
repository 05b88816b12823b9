"""config.json -> DecoderConfig: a real publisher file, both transformers layouts, and family rules."""
import json
import shutil

import pytest
import torch

from models import Decoder, load_config
from models.checkpoint import inverse_key
from models.checkpoint import FAMILIES


def _write(tmp_path, raw):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def test_real_qwen2_config_builds_hf_shapes(shared_data, tmp_path):
    """Qwen2-1.5B-Instruct's config.json as published: our meta-device model has exactly the tensors, under
    the checkpoint keys, with the shapes HF's Qwen2 model has for the same file (oracle)."""
    transformers = pytest.importorskip("transformers")
    shutil.copy(shared_data / "tokenizers" / "qwen2" / "config_qwen2-1.5b-instruct.json", tmp_path / "config.json")
    cfg = load_config(tmp_path)
    assert (cfg.n_kv_heads, cfg.qkv_bias, cfg.o_bias, cfg.tie_embeddings, cfg.sliding_window) == (2, True, False,
                                                                                                 True, None)
    with torch.device("meta"):
        ours = Decoder(cfg)
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config.from_pretrained(tmp_path))
    table = FAMILIES["qwen2"].keys
    ours_shapes = {inverse_key(n, table): tuple(p.shape) for n, p in ours.named_parameters()}
    hf_shapes = {n: tuple(p.shape) for n, p in hf.named_parameters()}  # tied lm_head listed once, as ours
    assert ours_shapes == hf_shapes


def test_transformers_5_rope_parameters_layout_equals_4_layout(tmp_path):
    base = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4)
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (tmp_path / "v4").mkdir(), (tmp_path / "v5").mkdir()
    v4 = load_config(_write(tmp_path / "v4", {**base, "rope_theta": 5e5,
                                              "rope_scaling": {"rope_type": "llama3", **scaling}}))
    v5 = load_config(_write(tmp_path / "v5", {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5,
                                                                          **scaling}}))
    assert v4 == v5 and v4.rope_theta == 5e5 and v4.rope_scaling == {"type": "llama3", **scaling}


@pytest.mark.parametrize("use, max_window_layers, expect", [(False, 0, None), (True, 0, 16), (True, 2, None)])
def test_qwen2_sliding_window_rule(tmp_path, use, max_window_layers, expect):
    raw = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, use_sliding_window=use, sliding_window=16, max_window_layers=max_window_layers)
    assert load_config(_write(tmp_path, raw)).sliding_window == expect


def test_qwen2_window_on_some_layers_only_is_an_error(tmp_path):
    raw = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, use_sliding_window=True, sliding_window=16, max_window_layers=2)
    with pytest.raises(ValueError, match=r"config\.json: sliding window on only some layers \(max_window_layers=2"):
        load_config(_write(tmp_path, raw))


@pytest.mark.parametrize("layer_types, match", [
    (["full_attention", "sliding_attention"], r"layer_types \['full_attention', 'sliding_attention'\] are not supported"),
    (["chunked_attention", "chunked_attention"], r"layer_types \['chunked_attention'\] are not supported"),
    (["full_attention", "full_attention"], r"layer_types \['full_attention'\] contradict sliding_window=16"),
])
def test_layer_types_must_agree_with_one_window_for_all_layers(tmp_path, layer_types, match):
    raw = dict(model_type="mistral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, sliding_window=16, layer_types=layer_types)
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, raw))
