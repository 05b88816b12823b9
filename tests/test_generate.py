"""models.generate against HF `generate(do_sample=False, num_beams=k)` (oracle), and oracle-free identities.

Oracle: each family (Llama, Qwen2, Mistral, OLMo-2, Phi-3) gets a tiny random HF model saved with
save_pretrained and loaded through our load_model. Weights are drawn wider than HF's default init (std 0.3)
so logits are spread out and no near-tie can flip between two implementations that agree to 1e-6. The EOS
id is a token HF's own unconstrained output uses often and that ends some row early (asserted), which
exercises the per-row stop; a Llama with two deliberately likely EOS tokens drives beam search through its
finished-hypothesis bookkeeping, early-stopping heuristic and length penalties.

Without the oracle: greedy equals the argmax of cache-free forwards, beam search with every prefix kept
equals exhaustive search, and the static decode step (the one replayed as a CUDA graph) equals the
dynamic-shape step.

Every test runs with small attention buckets and frequent "all finished?" host checks (`_small_steps`), so
these tiny generations cross several buckets and stop through the periodic check, as long ones do.
"""
import importlib
from collections import Counter
from itertools import product

import pytest
import torch
from torch._dynamo.utils import counters

from models import Decoder, DecoderConfig, KVCache, load_model
from models.generate import generate

COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, pad_token_id=0,
              bos_token_id=1, eos_token_id=None)
FAMILIES = {
    "llama": ("LlamaConfig", dict()),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),  # q/k/v biases, tied lm_head
    "mistral": ("MistralConfig", dict(sliding_window=6)),  # the window bites during generation
    "olmo2": ("Olmo2Config", dict()),
    "phi3": ("Phi3Config", dict(sliding_window=6)),  # fused qkv / gate_up split at load
}
LENGTHS = (7, 3, 12, 5)  # one prompt batched with longer and shorter ones
N_NEW = 14
generation = importlib.import_module("models.generate")  # the module: `models.generate` is the function


@pytest.fixture(autouse=True)
def _small_steps(monkeypatch):
    """Buckets of 8 slots (prompts of 3-12 tokens + 14 new ones span 3 or 4 of them) and a host check every
    3 steps (a search that stops early stops through it, after running frozen for up to 2 steps)."""
    monkeypatch.setattr(generation, "_BUCKET", 8)
    monkeypatch.setattr(generation, "_CHECK_EVERY", 3)


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _build(family: str, tmp_path_factory, likely_eos: tuple[int, ...] = ()):
    """(HF model, our model loaded from its save_pretrained directory).

    `likely_eos` tokens get lm_head rows along the mean final hidden state, scaled so each is emitted with
    probability ~0.4 at a typical position (the second a little less likely than the first). Then many beam
    hypotheses end early, all k finished slots fill, HF's early-stopping heuristic fires and more than k of
    the candidates can be EOS: the parts of beam search a random model alone rarely reaches.
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config_cls, extra = FAMILIES[family]
    cfg = getattr(transformers, config_cls)(**{**COMMON, **extra})
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # norms away from 1, so a misplaced norm cannot hide
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
        if likely_eos:
            h = hf.model(torch.randint(2, cfg.vocab_size, (8, 16))).last_hidden_state.flatten(0, 1)  # (128, dim)
            w = hf.lm_head.weight
            w[list(likely_eos)] = 0
            direction = h.mean(0) / h.mean(0).norm() ** 2  # <h, direction> ~ 1 on average
            top_logit = hf.lm_head(h).max(-1).values.mean()
            for i, tok in enumerate(likely_eos):
                w[tok] = direction * 1.2 * top_logit * 0.97 ** i
    path = tmp_path_factory.mktemp(family)
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None  # EOS only where a test passes one
    return hf, load_model(path)


@pytest.fixture(scope="module", params=list(FAMILIES))
def models(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


LIKELY_EOS = (5, 6)


@pytest.fixture(scope="module")
def eos_heavy(tmp_path_factory):
    """A Llama whose tokens LIKELY_EOS are frequent, for the finished-hypothesis bookkeeping."""
    return _build("llama", tmp_path_factory, likely_eos=LIKELY_EOS)


def _hf_generate(hf, prompts, num_beams, eos_id, pad_id=0, **kwargs) -> list[list[int]]:
    """HF's new tokens for the left-padded batch, each cut after its first EOS."""
    P = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=attention_mask, do_sample=False, num_beams=num_beams,
                      max_new_tokens=N_NEW, eos_token_id=eos_id, pad_token_id=pad_id, **kwargs)
    eos = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else eos_id
    rows = []
    for row in out[:, P:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _check(hf, ours, prompts, num_beams, eos_id, expect=None, **kwargs) -> list[list[int]]:
    """Ours equals HF (`expect`, computed if not given) for the batch, and for prompts[0] alone (it sits
    between longer and shorter ones)."""
    if expect is None:
        expect = _hf_generate(hf, prompts, num_beams, eos_id, **kwargs)
    assert generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos_id, pad_id=0, **kwargs) == expect
    alone = generate(ours, prompts[:1], N_NEW, num_beams=num_beams, eos_id=eos_id, pad_id=0, **kwargs)
    assert alone == expect[:1]
    return expect


def _stopping_eos(hf, prompts, num_beams, free) -> tuple[int, list[list[int]]]:
    """Among the tokens HF's unconstrained output `free` uses most, the first that makes HF end some row
    early, with HF's output for it."""
    for eos, _ in Counter(t for r in free for t in r).most_common(6):
        expect = _hf_generate(hf, prompts, num_beams, eos)
        if any(len(r) < N_NEW for r in expect):
            return eos, expect
    raise AssertionError("no frequent token ends a row early: the test would not exercise the stop")


@pytest.mark.parametrize("num_beams", [1, 4])
def test_matches_hf_batched_and_alone(models, num_beams):
    hf, ours = models
    prompts = _prompts(ours.cfg.vocab_size)
    free = _check(hf, ours, prompts, num_beams, None)
    assert all(len(r) == N_NEW for r in free)
    eos, expect = _stopping_eos(hf, prompts, num_beams, free)
    _check(hf, ours, prompts, num_beams, eos, expect)


@pytest.mark.parametrize("eos", [LIKELY_EOS[0], list(LIKELY_EOS)], ids=["one_eos", "two_eos"])
@pytest.mark.parametrize("kwargs", [dict(), dict(length_penalty=0.5), dict(length_penalty=-1.0),
                                    dict(early_stopping=True), dict(early_stopping="never", length_penalty=0.5)],
                         ids=["default", "lp0.5", "lp-1", "early", "never_lp0.5"])
def test_beam_matches_hf_when_eos_is_likely(eos_heavy, kwargs, eos):
    hf, ours = eos_heavy
    prompts = [p for seed in range(1, 6) for p in _prompts(ours.cfg.vocab_size, seed)]  # 20 prompts
    got = _check(hf, ours, prompts, 4, eos, **kwargs)
    assert sum(len(r) < N_NEW for r in got) >= len(prompts) // 2


def test_greedy_matches_hf_when_every_row_stops_early(eos_heavy):
    """Greedy stops through the periodic host check (every row has ended) and still equals HF."""
    hf, ours = eos_heavy
    prompts = [p for seed in range(1, 3) for p in _prompts(ours.cfg.vocab_size, seed)]
    got = _check(hf, ours, prompts, 1, list(LIKELY_EOS))
    assert max(map(len, got)) < N_NEW - generation._CHECK_EVERY


DECODERS = {  # built directly, no oracle: these tests run without transformers
    "gqa_bias_window": dict(qkv_bias=True, sliding_window=6),
    "olmo2_like_tied": dict(qk_norm=True, post_norm=True, tie_embeddings=True),
}


@pytest.fixture(params=list(DECODERS))
def decoder(request):
    cfg = DecoderConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
                        **DECODERS[request.param])
    return Decoder(cfg).eval()


def test_greedy_equals_argmax_of_full_forward(decoder):
    """No oracle needed: each greedy token is the argmax of a cache-free forward over the text so far
    (batched, left-padded and cached on one side; one unpadded prompt at a time, no cache on the other)."""
    ours = decoder
    prompts = _prompts(ours.cfg.vocab_size, seed=2)
    got = generate(ours, prompts, N_NEW)
    for prompt, new in zip(prompts, got):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(N_NEW):
                ids.append(int(ours(torch.tensor([ids]))[0, -1].argmax()))
        assert new == ids[len(prompt):]


def _exhaustive_best(model, prompt, n, eos, length_penalty) -> list[int]:
    """The hypothesis maximising sum_logprob / n_tokens ** length_penalty over EVERY continuation of at most
    n tokens (ending at the first EOS, or at n tokens), found by scoring all vocab ** n sequences at once."""
    V = model.cfg.vocab_size
    seqs = torch.tensor(list(product(range(V), repeat=n)))  # (V**n, n)
    ids = torch.cat((torch.tensor(prompt).expand(len(seqs), -1), seqs), 1)  # (V**n, P + n)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[:, len(prompt) - 1:-1].float(), -1)  # (V**n, n, V)
    cum = logp.gather(-1, seqs[..., None])[..., 0].cumsum(-1)  # (V**n, n)
    is_eos = seqs == eos if eos is not None else torch.zeros_like(seqs, dtype=torch.bool)  # (V**n, n)
    length = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, n)  # (V**n,) through the first EOS
    score = cum.gather(-1, (length - 1)[:, None])[:, 0] / length.float() ** length_penalty  # (V**n,)
    i = int(score.argmax())
    return seqs[i, :length[i]].tolist()


@pytest.mark.parametrize("eos, length_penalty", [(None, 1.0), (0, 1.0), (0, 0.5), (0, -1.0)])
def test_beam_search_with_every_prefix_kept_is_exhaustive_search(eos, length_penalty):
    """No oracle needed: with k = V ** (n - 1) beams every prefix survives, so beam search must return the
    best-scoring hypothesis of an exhaustive search (whose score is length-penalised the same way)."""
    V, n = 5, 4
    model = Decoder(DecoderConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                                  hidden_dim=64)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # spread the logits: no near-ties between hypotheses
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (length,), generator=g).tolist() for length in (5, 2, 7, 3, 4, 1)]
    best = [_exhaustive_best(model, p, n, eos, length_penalty) for p in prompts]
    kw = dict(eos_id=eos, length_penalty=length_penalty)
    assert generate(model, prompts, n, num_beams=V ** (n - 1), **kw) == best
    # the search is not trivial: two beams miss the best hypothesis somewhere, and EOS ends some of them
    assert generate(model, prompts, n, num_beams=2, **kw) != best
    assert eos is None or any(len(b) < n for b in best)


def test_eos_is_kept_and_nothing_follows(decoder):
    ours = decoder
    prompts = _prompts(ours.cfg.vocab_size, seed=3)
    free = generate(ours, prompts, N_NEW)
    eos = free[0][2]
    got = generate(ours, prompts, N_NEW, eos_id=eos)
    for f, g in zip(free, got):
        stop = f.index(eos) + 1 if eos in f else N_NEW
        assert g == f[:stop]


def test_static_step_logits_equal_dynamic_step(decoder):
    """The decoder's static step (tensor cache_start, the caller's mask over a fixed number of slots) gives
    the dynamic step's logits (int cache_start, pad_mask, the decoder's own causal and window masks), step
    after step, on a left-padded batch with GQA and a biting window."""
    ours = decoder
    window = ours.cfg.sliding_window
    prompts = _prompts(ours.cfg.vocab_size, seed=4)
    P, n_slots = max(LENGTHS), max(LENGTHS) + N_NEW
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad_mask = ids != 0  # prompts draw from [2, vocab): 0 is padding only
    written = torch.cat((pad_mask, torch.ones(len(prompts), n_slots - P, dtype=torch.bool)), 1)  # (B, slots)
    positions = (pad_mask.cumsum(-1) - 1).clamp(min=0)
    caches = [KVCache.for_model(ours, len(prompts), n_slots) for _ in range(2)]
    slot_idx = torch.arange(n_slots)
    with torch.no_grad():
        for cache in caches:
            ours(ids, positions=positions, pad_mask=pad_mask, kv_cache=cache)
        tok, pos = ids[:, -1:], positions[:, -1:]
        for slot in range(P, n_slots):
            tok, pos = (tok * 7 + 3) % ours.cfg.vocab_size, pos + 1  # any tokens will do
            dynamic = ours(tok, positions=pos, pad_mask=written[:, :slot + 1], kv_cache=caches[0],
                           cache_start=slot)
            visible = written & (slot_idx <= slot) & (slot_idx > slot - (window or n_slots))
            static = ours(tok, positions=pos, kv_cache=caches[1], cache_start=torch.tensor(slot),
                          attn_mask=visible[:, None])
            torch.testing.assert_close(static, dynamic, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[1].k, caches[0].k, rtol=1e-5, atol=1e-5)  # same keys in the same slots


@pytest.mark.parametrize("num_beams", [1, 4])
def test_static_generation_equals_dynamic_generation(decoder, num_beams):
    """Token for token on a left-padded batch whose rows end at different steps."""
    ours = decoder
    prompts = _prompts(ours.cfg.vocab_size, seed=5)
    free = generate(ours, prompts, N_NEW, num_beams=num_beams, static=False)
    eos = Counter(t for r in free for t in r).most_common(1)[0][0]
    dynamic = generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos, static=False)
    assert len({len(r) for r in dynamic}) > 1  # rows stop at different steps
    assert generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos) == dynamic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cuda_graph_replay_equals_dynamic_generation(decoder, num_beams, monkeypatch):
    """On the GPU (fp32): the graphed static steps give the dynamic path's tokens, and graphs were used."""
    ours = decoder.cuda()
    captured = []
    capture = generation._DecodeStep._capture
    monkeypatch.setattr(generation._DecodeStep, "_capture", lambda self, S: captured.append(S) or capture(self, S))
    prompts = _prompts(ours.cfg.vocab_size, seed=5)
    free = generate(ours, prompts, N_NEW, num_beams=num_beams, static=False)
    eos = Counter(t for r in free for t in r).most_common(1)[0][0]
    for eos_id, expect in ((None, free), (eos, generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos,
                                                          static=False))):
        assert generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos_id) == expect
        assert generate(ours, prompts, N_NEW, num_beams=num_beams, eos_id=eos_id, use_cuda_graph=False) == expect
    assert len(set(captured)) > 1  # several buckets, each replayed from its graph


@pytest.mark.parametrize("args, match", [
    (dict(prompts=[]), "prompts is empty"),
    (dict(prompts=[[5], []]), "prompt 1 is empty"),
    (dict(prompts=[[5, 160]]), "prompt 0 has token 160"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_beams=0), "num_beams"),
    (dict(eos_id=-1), "eos_id -1"),
    (dict(eos_id=[3, 999]), "eos_id 999"),
    (dict(early_stopping="yes"), "early_stopping"),
])
def test_bad_arguments_are_clear_errors(args, match):
    ours = Decoder(DecoderConfig(vocab_size=160, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                                 hidden_dim=64))
    call = dict(prompts=[[5, 6]], max_new_tokens=3) | args
    with pytest.raises(ValueError, match=match):
        generate(ours, call.pop("prompts"), call.pop("max_new_tokens"), **call)


def test_compiled_blocks_generate_the_same_tokens():
    """Decoder.compile_blocks() also serves generation (prefill and static decode steps, the cache written in
    place by the compiled blocks): the same tokens as eager, greedy and beam 4, on a left-padded batch with GQA
    and a biting window."""
    torch.manual_seed(0)
    ours = Decoder(DecoderConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                                 hidden_dim=128, **DECODERS["gqa_bias_window"])).eval()
    prompts = _prompts(ours.cfg.vocab_size, seed=6)
    expect = [generate(ours, prompts, N_NEW, num_beams=k) for k in (1, 4)]
    ours.compile_blocks()
    graphs = counters["stats"]["unique_graphs"]
    assert [generate(ours, prompts, N_NEW, num_beams=k) for k in (1, 4)] == expect
    assert counters["stats"]["unique_graphs"] - graphs >= 3  # prefill, T = 1 and T = 4 steps were compiled
