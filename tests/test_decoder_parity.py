"""Our Decoder, loaded through load_model from HF's own save_pretrained output, against HF's model (oracle).

Each family gets a tiny random HF model whose config switches on that family's flags (GQA, biases,
tied embeddings, sliding window shorter than the sequence, fused Phi-3 tensors, OLMo-2 q/k norms and
post-norms, rope scaling, partial rotary). Norm weights and biases are perturbed away from HF's 1/0
initialisation so a misplaced norm or bias cannot go unnoticed.
"""
import pytest
import torch

from models import load_model
from models.kv_cache import KVCache

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}
CASES = {
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, rope_scaling=ROPE_LLAMA3)),
    "llama_linear": ("LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                                         num_key_value_heads=4)),
    "mistral": ("MistralConfig", dict(sliding_window=5, head_dim=24)),  # head_dim != hidden / heads
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen2_window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=5, max_window_layers=0)),
    "phi3": ("Phi3Config", dict(sliding_window=5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                   "partial_rotary_factor": 0.5})),
    "olmo2": ("Olmo2Config", dict()),
}
T = 12
ATOL = 1e-4


def _hf_model(name):
    config_cls, extra = CASES[name]
    cfg = getattr(transformers, config_cls)(**{**COMMON, **extra})
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    """(name, HF model, checkpoint dir) with model.safetensors, written by HF's save_pretrained."""
    torch.manual_seed(0)
    model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def _left_padded(lengths, vocab):
    """input_ids (B, T), pad_mask (B, T) with the real tokens right-aligned, positions (B, T) from 0."""
    ids = torch.randint(3, vocab, (len(lengths), T))
    pad_mask = torch.arange(T)[None] >= (T - torch.tensor(lengths))[:, None]
    positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids.masked_fill(~pad_mask, 0), pad_mask, positions


def test_logits_match_hf(saved):
    name, hf, path = saved
    ours = load_model(path)
    ids = torch.randint(0, COMMON["vocab_size"], (2, T))
    with torch.no_grad():
        expect = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expect, atol=ATOL, rtol=0)


def test_left_padded_batch_matches_hf(saved):
    name, hf, path = saved
    ours = load_model(path)
    ids, pad_mask, positions = _left_padded([T, 7, 3], COMMON["vocab_size"])
    with torch.no_grad():
        expect = hf(ids, attention_mask=pad_mask.long(), position_ids=positions).logits
        got = ours(ids, positions=positions, pad_mask=pad_mask)
    assert not got.isnan().any()
    torch.testing.assert_close(got[pad_mask], expect[pad_mask], atol=ATOL, rtol=0)


def test_kv_cache_steps_equal_full_forward(saved):
    """Prefill a left-padded batch, then one token at a time: every step equals HF's full forward."""
    name, hf, path = saved
    ours = load_model(path)
    ids, pad_mask, positions = _left_padded([T, 6], COMMON["vocab_size"])
    prefill = 5
    cache = KVCache.for_model(ours, batch=2, max_len=T + 2)
    with torch.no_grad():
        expect = hf(ids, attention_mask=pad_mask.long(), position_ids=positions).logits
        steps = [ours(ids[:, :prefill], positions=positions[:, :prefill], pad_mask=pad_mask[:, :prefill],
                      kv_cache=cache)]
        for t in range(prefill, T):
            steps.append(ours(ids[:, t:t + 1], positions=positions[:, t:t + 1], pad_mask=pad_mask[:, :t + 1],
                              kv_cache=cache, cache_start=t))
    got = torch.cat(steps, dim=1)
    torch.testing.assert_close(got[pad_mask], expect[pad_mask], atol=ATOL, rtol=0)


def test_sharded_and_bin_checkpoints_load_the_same(saved, tmp_path):
    """Shards through model.safetensors.index.json, and a PyTorch pytorch_model.bin (the HF state dict,
    which for tied models also stores lm_head.weight), give the same logits."""
    name, hf, path = saved
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids = torch.randint(0, COMMON["vocab_size"], (1, T))
    with torch.no_grad():
        reference = load_model(path)(ids)
        for variant in ("sharded", "bin"):
            torch.testing.assert_close(load_model(tmp_path / variant)(ids), reference, atol=0, rtol=0)


def test_bfloat16_load_matches_hf_bfloat16(saved):
    name, hf, path = saved
    ours = load_model(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    hf16 = _hf_model(name).to(torch.bfloat16)
    hf16.load_state_dict(hf.state_dict())
    ids = torch.randint(0, COMMON["vocab_size"], (2, T))
    with torch.no_grad():
        got, expect = ours(ids).float(), hf16(ids).logits.float()
    torch.testing.assert_close(got, expect, atol=2e-2, rtol=0)
