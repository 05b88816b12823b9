"""Strict encoder loading: every malformed checkpoint is an error naming the file and key."""
import json

import pytest
import torch

import dataclasses

from models import load_config, load_model
from models.checkpoint import FAMILIES, inverse_key
from models.encoder import Encoder, EncoderConfig
from data.safetensors_io import load_safetensors, save_safetensors

CONFIG_JSON = dict(model_type="bert", vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=20, type_vocab_size=2, pad_token_id=0)


def _write(path, num_labels=2, model_type="bert", prefix="bert."):
    """A random checkpoint in the publisher layout, written through our own key table (its inverse)."""
    conf = dict(CONFIG_JSON, model_type=model_type)
    (path / "config.json").write_text(json.dumps(conf))
    cfg = dataclasses.replace(load_config(path), num_labels=num_labels)
    model = Encoder(cfg)
    tensors = {}
    for name, t in model.state_dict().items():
        key = inverse_key(name, FAMILIES[model_type].keys)
        tensors[key if key.startswith("classifier.") else prefix + key] = t
    save_safetensors(path / "model.safetensors", tensors)
    return model


def _edit(path, fn):
    tensors, meta = load_safetensors(path / "model.safetensors")
    fn(tensors)
    save_safetensors(path / "model.safetensors", tensors)


@pytest.mark.parametrize("model_type,prefix", [("bert", "bert."), ("roberta", "roberta."), ("bert", "")])
def test_round_trip_through_the_key_table(tmp_path, model_type, prefix):
    model = _write(tmp_path, model_type=model_type, prefix=prefix)
    loaded = load_model(tmp_path)
    assert loaded.cfg.num_labels == 2
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


def test_missing_tensor_names_the_key(tmp_path):
    _write(tmp_path)
    _edit(tmp_path, lambda t: t.pop("bert.encoder.layer.1.attention.self.key.bias"))
    with pytest.raises(ValueError, match=r"missing tensor 'bert\.encoder\.layer\.1\.attention\.self\.key\.bias'"):
        load_model(tmp_path)


def test_unexpected_tensor_names_the_key(tmp_path):
    _write(tmp_path)
    _edit(tmp_path, lambda t: t.update({"bert.encoder.layer.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"model.safetensors: unexpected tensor 'bert.encoder.layer.0.extra.weight'"):
        load_model(tmp_path)


def test_misshaped_tensor_names_key_and_shapes(tmp_path):
    _write(tmp_path)
    _edit(tmp_path, lambda t: t.update({"bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(31, 16)}))
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*\(31, 16\).*\(32, 16\)"):
        load_model(tmp_path)


def test_head_size_mismatch_and_known_unused_keys(tmp_path):
    _write(tmp_path, num_labels=3)
    with pytest.raises(ValueError, match="3 labels.*2 were asked"):
        load_model(tmp_path, num_labels=2)
    # pretraining heads (BERT's cls.*) are known and ignored; the fine-tuning head is kept
    _edit(tmp_path, lambda t: t.update({"cls.predictions.bias": torch.zeros(50)}))
    assert load_model(tmp_path).cfg.num_labels == 3


def test_unsupported_family_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(CONFIG_JSON, model_type="electra")))
    with pytest.raises(ValueError, match="unsupported model family \\(model_type='electra'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_JSON))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(CONFIG_JSON, position_embedding_type="relative_key")))
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        load_config(tmp_path)


def test_meta_device_build_counts_parameters():
    cfg = EncoderConfig(vocab_size=50265, dim=768, n_layers=12, n_heads=12, hidden_dim=3072, max_positions=514,
                        type_vocab_size=1, pad_id=1, position_offset=1, pooler=False, classifier="cls_mlp")
    with torch.device("meta"):
        model = Encoder(cfg)
    # RoBERTa-base's body: 124,645,632 parameters with its pooler (HF RobertaModel), 590,592 of them the pooler
    assert sum(p.numel() for p in model.parameters()) == 124_645_632 - 590_592


def test_minilm_golden_values(minilm_dir):
    """Without the oracle installed: our tokenizer + encoder on the real MiniLM reproduce values that
    transformers 5.24's BertTokenizerFast and BertModel gave for this exact input (recorded once; the
    oracle tests in test_encoder_parity.py and test_wordpiece.py check the same path more widely)."""
    from data.wordpiece_tokenizer import WordPieceTokenizer
    tok = WordPieceTokenizer.from_dir(minilm_dir)
    ids, types = tok.encode_pair("GiVA scales two vectors.", "The bases come from a gradient.")
    assert ids == [101, 21025, 3567, 9539, 2048, 19019, 1012, 102, 1996, 7888, 2272, 2013, 1037, 17978, 1012, 102]
    assert types == [0] * 8 + [1] * 8
    model = load_model(minilm_dir).eval()
    with torch.no_grad():
        h = model.forward_hidden(torch.tensor([ids]), token_type_ids=torch.tensor([types]))[0]  # (T, D)
        pooled = model.pooler(h[None])[0]
    golden = torch.tensor
    torch.testing.assert_close(h[0, :4], golden([0.01831, -0.6196, -0.13568, 0.18131]), atol=2e-5, rtol=0)
    torch.testing.assert_close(h[-1, :4], golden([-0.19223, -0.95838, 0.04942, -0.00266]), atol=2e-5, rtol=0)
    torch.testing.assert_close(pooled[:4], golden([0.00137, -0.09794, -0.0273, 0.06969]), atol=2e-5, rtol=0)
    assert abs(h.abs().mean().item() - 0.345996) < 2e-6


def test_too_long_input_is_a_clear_error():
    cfg = EncoderConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_positions=10,
                        pad_id=1, position_offset=1, pooler=False, classifier="cls_mlp")
    model = Encoder(cfg)
    model.forward_hidden(torch.full((1, 8), 5))  # positions 2..9: fits
    with pytest.raises(ValueError, match="9 tokens need position 10, but the model has 10 position embeddings"):
        model.forward_hidden(torch.full((1, 9), 5))
