"""The Decoder's own identities, no oracle needed: masks, padding, the KV cache and branches sharing a prefix."""
import pytest
import torch

from models import load_model, write_random_checkpoint
from models.kv_cache import KVCache


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """GQA and a sliding window (8) shorter than the sequences below."""
    return load_model(write_random_checkpoint(tmp_path_factory.mktemp("mistral"), family="mistral"))


def _left_pad(seqs, pad_id=0):
    T = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (T - len(s)) + s for s in seqs])
    pad_mask = torch.tensor([[False] * (T - len(s)) + [True] * len(s) for s in seqs])
    positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, pad_mask, positions


@torch.no_grad()
def test_left_padded_rows_equal_unpadded_rows(mistral):
    seqs = [list(range(5, 25)), list(range(30, 41)), [7, 8]]
    ids, pad_mask, positions = _left_pad(seqs)
    batched = mistral(ids, positions=positions, pad_mask=pad_mask)
    assert not batched.isnan().any()  # pad query rows attend to themselves, never to nothing
    for row, s in enumerate(seqs):
        alone = mistral(torch.tensor([s]))[0]
        torch.testing.assert_close(batched[row, -len(s):], alone, atol=1e-5, rtol=0)


@torch.no_grad()
def test_all_true_pad_mask_equals_no_mask(mistral):
    ids = torch.randint(0, 259, (2, 20))
    torch.testing.assert_close(mistral(ids, pad_mask=torch.ones(2, 20, dtype=torch.bool)), mistral(ids),
                               atol=1e-5, rtol=0)


@torch.no_grad()
def test_chunked_prefill_equals_full_forward(mistral):
    """Several tokens at a time into a warm cache (the explicit-mask path with cache_start > 0)."""
    ids = torch.randint(0, 259, (2, 20))
    cache = KVCache.for_model(mistral, batch=2, max_len=24)
    chunks = [mistral(ids[:, a:b], kv_cache=cache, cache_start=a) for a, b in ((0, 7), (7, 15), (15, 16), (16, 20))]
    torch.testing.assert_close(torch.cat(chunks, 1), mistral(ids), atol=1e-5, rtol=0)


@torch.no_grad()
def test_attn_mask_attends_to_branches_sharing_a_prefix(mistral):
    """Beam search's layout: two branches of one prefix run as T = 2 tokens of one row, each new token seeing
    the prefix and its own branch's slots only (attn_mask), give the logits of each branch run alone."""
    ids = torch.randint(0, 259, (1, 6))
    a, b = torch.randint(0, 259, (2, 2))  # two branches of two tokens each
    cache = KVCache.for_model(mistral, batch=1, max_len=10)
    mistral(ids, kv_cache=cache)
    prefix = torch.ones(2, 6, dtype=torch.bool)
    first = torch.cat((prefix, torch.eye(2, dtype=torch.bool)), 1)[None]  # (1, 2, 8): slot 6 is a, slot 7 is b
    step1 = mistral(torch.stack((a[0], b[0]))[None], positions=torch.tensor([[6, 6]]), kv_cache=cache,
                    cache_start=6, attn_mask=first)  # (1, 2, V)
    # second step: slot 8 continues b (sees slot 7), slot 9 continues a (sees slot 6)
    second = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)  # (2, 4) over slots 6..9
    mask = torch.cat((prefix, second), 1)[None]  # (1, 2, 10)
    step2 = mistral(torch.stack((b[1], a[1]))[None], positions=torch.tensor([[7, 7]]), kv_cache=cache,
                    cache_start=8, attn_mask=mask)
    for branch, got1, got2 in ((a, step1[0, 0], step2[0, 1]), (b, step1[0, 1], step2[0, 0])):
        alone = mistral(torch.cat((ids[0], branch))[None])[0]  # (8, V)
        torch.testing.assert_close(got1, alone[6], atol=1e-5, rtol=0)
        torch.testing.assert_close(got2, alone[7], atol=1e-5, rtol=0)


def test_bad_arguments_are_clear_errors(mistral):
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"pad_mask has shape \(2, 4\), expected \(batch, slots\) = \(2, 5\)"):
        mistral(ids, pad_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"KV cache holds 4 slots, forward needs 5"):
        mistral(ids, kv_cache=KVCache.for_model(mistral, batch=2, max_len=4))
    with pytest.raises(ValueError, match=r"cache_start and attn_mask are only meaningful with a kv_cache"):
        mistral(ids, cache_start=3)
    cache = KVCache.for_model(mistral, batch=2, max_len=8)
    with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 5, 4\), expected .* = \(2, 5, 5\)"):
        mistral(ids, kv_cache=cache, attn_mask=torch.ones(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"pass pad_mask or attn_mask, not both"):
        mistral(ids, kv_cache=cache, attn_mask=torch.ones(2, 5, 5, dtype=torch.bool),
                pad_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"needs a kv_cache, an attn_mask"):
        mistral(ids, kv_cache=cache, cache_start=torch.tensor(0))


def test_forward_hidden_feeds_lm_head(mistral):
    ids = torch.randint(0, 259, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(mistral.lm_head(mistral.forward_hidden(ids)), mistral(ids), atol=0, rtol=0)


def test_casting_the_model_keeps_rotary_frequencies_fp32(tmp_path):
    model = load_model(write_random_checkpoint(tmp_path, family="llama"))
    exact = model.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.inv_freq.dtype == torch.float32 and torch.equal(model.inv_freq, exact)
