"""Our encoder against transformers (the oracle) on tiny random BERT/RoBERTa and the real all-MiniLM-L6-v2."""
import pytest
import torch

from models import load_model

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, type_vocab_size=2)


def _batch(vocab: int, pad_id: int, pair: bool):
    """Three right-padded rows of different lengths; the middle one carries padding."""
    ids = torch.randint(pad_id + 3, vocab, (3, 15))
    mask = torch.ones(3, 15, dtype=torch.bool)
    mask[1, 9:] = False
    ids[1, 9:] = pad_id
    types = torch.zeros_like(ids)
    if pair:
        types[:, 6:] = 1
        types[1, 9:] = 0
    return ids, mask, types


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("num_labels", [0, 1, 3])
def test_tiny_random_matches_transformers(tmp_path, family, num_labels):
    if family == "bert":
        cfg = transformers.BertConfig(**TINY, pad_token_id=0, num_labels=max(num_labels, 1))
        cls = transformers.BertForSequenceClassification if num_labels else transformers.BertModel
    else:
        cfg = transformers.RobertaConfig(**TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                         num_labels=max(num_labels, 1))
        cls = transformers.RobertaForSequenceClassification if num_labels else transformers.RobertaModel
    hf = cls(cfg).eval()
    hf.save_pretrained(tmp_path)  # the publisher layout: config.json + model.safetensors
    ours = load_model(tmp_path).eval()
    assert ours.cfg.num_labels == num_labels

    ids, mask, types = _batch(cfg.vocab_size, cfg.pad_token_id, pair=family == "bert")
    kwargs = dict(input_ids=ids, attention_mask=mask.long(), token_type_ids=types)
    with torch.no_grad():
        hidden = ours.forward_hidden(ids, mask, types)  # (B, T, D)
        if num_labels:
            out = hf(**kwargs, output_hidden_states=True)
            ref_hidden = out.hidden_states[-1]
            torch.testing.assert_close(ours(ids, mask, types), out.logits, atol=1e-4, rtol=0)
        else:
            ref_hidden = hf(**kwargs).last_hidden_state
    # Pad query rows are garbage in both implementations; compare the real tokens.
    torch.testing.assert_close(hidden[mask], ref_hidden[mask], atol=1e-4, rtol=0)


def test_minilm_matches_transformers(minilm_dir):
    ours = load_model(minilm_dir).eval()
    hf = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    ids, mask, types = _batch(30522, 0, pair=True)
    with torch.no_grad():
        hidden = ours.forward_hidden(ids, mask, types)
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        pooled = ours.pooler(hidden)
    torch.testing.assert_close(hidden[mask], ref[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, hf.pooler(ref), atol=1e-4, rtol=0)


def test_fresh_head_on_pretrained_body(minilm_dir):
    """A head the checkpoint lacks is initialised fresh; the body is still the checkpoint's, bit for bit."""
    bare = load_model(minilm_dir).eval()
    clf = load_model(minilm_dir, num_labels=2).eval()
    assert clf.classifier.weight.shape == (2, 384) and torch.all(clf.classifier.bias == 0)
    assert 0.01 < clf.classifier.weight.std().item() < 0.03  # normal(0, initializer_range = 0.02)
    ids = torch.randint(1000, 5000, (2, 7))
    with torch.no_grad():
        assert torch.equal(bare.forward_hidden(ids), clf.forward_hidden(ids))
        assert clf(ids).shape == (2, 2)


@pytest.mark.parametrize("layout", ["shards", "bin"])
def test_sharded_and_bin_checkpoints_load(tmp_path, layout):
    cfg = transformers.RobertaConfig(**TINY, pad_token_id=1, num_labels=2)
    hf = transformers.RobertaForSequenceClassification(cfg).eval()
    if layout == "shards":
        hf.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:  # the older publisher layout: config.json + pytorch_model.bin
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ids, mask, types = _batch(cfg.vocab_size, 1, pair=False)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path).eval()(ids, mask, types),
                                   hf(input_ids=ids, attention_mask=mask.long()).logits, atol=1e-4, rtol=0)
