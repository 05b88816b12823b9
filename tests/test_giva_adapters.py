"""The adapted-linear protocol for every method: zero-init equivalence (T4), merge two ways (T5),
shared and seeded bases (T7), dropout on the branch only, fp32 adapters on a bf16 base, config errors."""
import copy

import pytest
import torch
from torch import nn

from giva import (AdapterConfig, adapted_layers, apply_adapters, compute_bases, estimate_gradients, merge_adapters,
                  unmerge_adapters)
from giva.giva_linear import giva_bases
from giva.lora import LoraLinear
from giva.randlora import RandLoraLinear, randlora_shared_bases
from giva.vera import VeraLinear, vera_shared_bases
from giva_toy import ToyLM, adapt, lm_loss, toy_batches

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
METHODS = ["giva", "vera", "osora", "randlora", "lora"]


def adapted_toy(method, **kw):
    """(pristine copy, adapted model) of the same random ToyLM."""
    model = ToyLM()
    pristine = copy.deepcopy(model)
    cfg = AdapterConfig(method=method, r=4, targets=TARGETS, alpha=8.0, **kw)
    grads = estimate_gradients(model, toy_batches(1), lm_loss, TARGETS) if method == "giva" else None
    apply_adapters(model, cfg, compute_bases(model, cfg, grads))
    return pristine, model


def randomize_trainables(model):
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            for p in layer.trainable().values():
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("method", METHODS + ["full"])
def test_t4_zero_init_equivalence(method):
    pristine, model = adapted_toy(method)
    ids = toy_batches(1, seed=1)[0]
    if method == "osora":  # W_res + dW0 = W0 only up to rounding
        torch.testing.assert_close(model(ids), pristine(ids), rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(model(ids), pristine(ids))


@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_tensors_train(method):
    _, model = adapted_toy(method)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    prefix = {"giva": "giva_lambda_", "vera": "vera_lambda_", "osora": "osora_lambda_", "randlora": "randlora_",
              "lora": "lora_"}[method]
    assert names and all(n.rsplit(".", 1)[-1].startswith(prefix) for n in names)
    assert all(p.dtype == torch.float32 for layer in adapted_layers(model).values() for p in layer.trainable().values())


@pytest.mark.parametrize("method", METHODS)
def test_t5_merge_two_ways(method):
    _, model = adapted_toy(method)
    randomize_trainables(model)
    ids = toy_batches(1, seed=1)[0]
    unmerged_out = model(ids)
    layers = adapted_layers(model)
    before = {n: l.weight.detach().clone() for n, l in layers.items()}
    deltas = {n: l.delta_weight().detach() for n, l in layers.items()}
    assert all(d.abs().max() > 0 for d in deltas.values())
    merge_adapters(model)
    merge_adapters(model)  # idempotent
    for n, layer in layers.items():
        assert layer.merged
        torch.testing.assert_close(layer.weight, before[n] + deltas[n], rtol=0, atol=0)
    # Merged and unmerged logits agree up to fp32 rounding: each layer's W x + dW x vs (W + dW) x differs by
    # about n * eps * |x| (|W| + |dW|) per entry (n <= 40 here), carried through two blocks; 1e-4 of the
    # logits' scale holds that with a margin on every machine, and a wrong merge is off by O(1).
    scale = unmerged_out.abs().max().item()
    torch.testing.assert_close(model(ids), unmerged_out, rtol=0, atol=1e-4 * scale)
    unmerge_adapters(model)
    unmerge_adapters(model)
    for n, layer in layers.items():  # W + dW - dW in fp32: one rounding of |W| + |dW| per entry
        tol = 2 * torch.finfo(torch.float32).eps * (before[n].abs() + deltas[n].abs()).max().item()
        torch.testing.assert_close(layer.weight, before[n], rtol=0, atol=tol)
    torch.testing.assert_close(model(ids), unmerged_out, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_dropout_only_on_the_branch(method):
    """With dW = 0 in train mode the output is the base output exactly, so the base path is never dropped;
    with dW != 0 two train-mode forwards differ (the branch is dropped) while eval-mode ones agree."""
    pristine, model = adapted_toy(method, dropout=0.5)
    ids = toy_batches(1, seed=1)[0]
    model.train()
    if method != "osora":
        assert torch.equal(model(ids), pristine(ids))
    randomize_trainables(model)
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_bf16_base_keeps_fp32_adapter_math():
    lin = nn.Linear(16, 12).to(torch.bfloat16)
    shared = vera_shared_bases(8, 12, 16, seed=0, device="cpu")
    layer = VeraLinear(lin, AdapterConfig(method="vera", r=8, targets=["x"], d_initial=0.1), "x", shared)
    with torch.no_grad():
        layer.vera_lambda_b.normal_()
    x = torch.randn(5, 16).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.vera_lambda_b.dtype == torch.float32
    base = nn.functional.linear(x, lin.weight, lin.bias)  # bf16
    expected = (base + x.float() @ layer.delta_weight().T).to(torch.bfloat16)  # fp32 branch, sum cast back
    torch.testing.assert_close(y, expected, rtol=0, atol=0.02)


def test_t7_vera_bases_seeded_and_sliced():
    A0 = vera_shared_bases(8, 40, 24, seed=5, device="cpu")
    torch.rand(100)  # global RNG moves: the bases must not
    A1 = vera_shared_bases(8, 40, 24, seed=5, device="cpu")
    A2 = vera_shared_bases(8, 40, 24, seed=6, device="cpu")
    assert torch.equal(A0.vera_A, A1.vera_A) and torch.equal(A0.vera_B, A1.vera_B)
    assert not torch.equal(A0.vera_A, A2.vera_A)
    assert A0.vera_A.abs().max() <= (6 / 24) ** 0.5 and A0.vera_B.abs().max() <= (6 / 8) ** 0.5
    _, model = adapted_toy("vera", vera_seed=5)
    randomize_trainables(model)
    layers = list(adapted_layers(model).values())
    assert all(l.shared is layers[0].shared for l in layers)
    A, B = layers[0].shared.vera_A, layers[0].shared.vera_B
    assert A.shape == (4, 40) and B.shape == (40, 4)  # n_max = 40 (down_proj in), m_max = 40 (up_proj out)
    for l in layers:
        m, n = l.out_features, l.in_features
        expected = torch.diag(l.vera_lambda_b) @ B[:m] @ torch.diag(l.vera_lambda_d) @ A[:, :n]
        torch.testing.assert_close(l.delta_weight(), expected)


def test_t7_randlora_bases_seeded_pairing_and_full_rank():
    s0 = randlora_shared_bases(3, 40, 24, seed=1, device="cpu")
    torch.rand(100)
    s1 = randlora_shared_bases(3, 40, 24, seed=1, device="cpu")
    assert torch.equal(s0.randlora_A, s1.randlora_A) and torch.equal(s0.randlora_B, s1.randlora_B)
    assert s0.randlora_A.shape == (3, 1, 24) and s0.randlora_B.shape == (40, 8, 3)  # N_max = ceil(24 / 3)
    for m, n in [(20, 10), (10, 20)]:  # n <= m, and n > m (transposed)
        lin = nn.Linear(n, m)
        layer = RandLoraLinear(lin, AdapterConfig(method="randlora", r=3, targets=["x"], alpha=2.0,
                                                  randlora_sqrt_n=True), "x", s0)
        with torch.no_grad():
            layer.randlora_lambda.normal_()
            layer.randlora_gamma.normal_()
        r, N, d, D = 3, layer.N, min(m, n), max(m, n)
        assert N == 4 and layer.scaling == 2.0 / (3 * N ** 0.5)
        # the code's pairing, written as an explicit sum: column c of B~ meets row c of A~
        dW = torch.zeros(D, d)
        for c in range(r * N):
            col = s0.randlora_B[:D, c // r, c % r]
            row = layer.randlora_lambda[c // N, c % N] * s0.randlora_A[c // N, 0, :d] * layer.randlora_gamma[c % N]
            dW += torch.outer(col, row)
        dW = (dW if n <= m else dW.T) * layer.scaling
        torch.testing.assert_close(layer.delta_weight(), dW, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.branch(torch.eye(n)), dW.T, rtol=1e-5, atol=1e-6)
        assert torch.linalg.matrix_rank(layer.delta_weight()) == min(m, n)
        lora = LoraLinear(nn.Linear(n, m), AdapterConfig(method="lora", r=3, targets=["x"], alpha=1.0), "x")
        with torch.no_grad():
            lora.lora_B.normal_()
        assert torch.linalg.matrix_rank(lora.delta_weight()) <= 3


@pytest.mark.parametrize("init", ["topsv", "secsv", "rand"])
def test_t7_giva_bases_same_seed_same_bases(init):
    G = torch.randn(30, 20)
    A0, B0 = giva_bases(G, 4, init, seed=7)
    torch.randn(1000)  # global RNG moves
    A1, B1 = giva_bases(G, 4, init, seed=7)
    A2, B2 = giva_bases(G, 4, init, seed=8)
    assert torch.equal(A0, A1) and torch.equal(B0, B1)
    assert not (torch.equal(A0, A2) and torch.equal(B0, B2))
    state = torch.get_rng_state()
    giva_bases(G, 4, init, seed=9)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was


def test_giva_rank_caps_and_b_strategies():
    G = torch.randn(16, 10, dtype=torch.float64).float()
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    A, B = giva_bases(G, 3, "topsv", seed=0, q=10, niter=8)
    assert torch.allclose((A.double() @ Vh[:3].T).abs(), torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose((B.double().T @ U[:, :3]).abs(), torch.eye(3, dtype=torch.float64), atol=1e-4)
    _, B2 = giva_bases(G, 3, "secsv", seed=0, q=10, niter=8)
    assert torch.allclose((B2.double().T @ U[:, 3:6]).abs(), torch.eye(3, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError, match="q=4"):
        giva_bases(G, 3, "secsv", seed=0, q=4)
    _, model = adapted_toy("giva", init="secsv")
    ranks = {n.rsplit(".", 1)[-1]: l.giva_A.shape[0] for n, l in adapted_layers(model).items()}
    assert ranks == {"q_proj": 4, "k_proj": 4, "v_proj": 4, "o_proj": 4, "up_proj": 4, "down_proj": 4}
    model = ToyLM()
    grads = estimate_gradients(model, toy_batches(1), lm_loss, ["k_proj"])
    adapt(model, AdapterConfig(method="giva", r=64, targets=["k_proj"], init="secsv"), grads)
    assert model.layers[0].self_attn.k_proj.giva_A.shape == (4, 24)  # min(64, min(8, 24) // 2)
    model = ToyLM()
    grads = estimate_gradients(model, toy_batches(1), lm_loss, ["k_proj"])
    adapt(model, AdapterConfig(method="giva", r=64, targets=["k_proj"], init="topsv"), grads)
    assert model.layers[0].self_attn.k_proj.giva_A.shape == (8, 24)  # min(64, 8, 24)


@pytest.mark.parametrize("field, value, message", [
    ("method", "dora", "adapter.method='dora': must be one of giva, vera"),
    ("r", 0, "adapter.r=0"), ("init", "VrU2r", "adapter.init='VrU2r': must be one of topsv"),
    ("dropout", 1.0, "adapter.dropout"), ("targets", "q_proj", "adapter.targets"),
    ("svd_q", 0, "adapter.svd_q"), ("targets", [], "method 'giva' needs at least one target")])
def test_config_errors_name_the_field(field, value, message):
    kw = dict(method="giva", r=4, targets=["q_proj"])
    kw[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        AdapterConfig(**kw)


def test_config_needs_alpha_for_lora_and_round_trips():
    with pytest.raises(ValueError, match="adapter.alpha"):
        AdapterConfig(method="lora", r=4, targets=["q_proj"])
    cfg = AdapterConfig(method="randlora", r=4, targets=["q_proj"], alpha=2.0, randlora_sqrt_n=True)
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        AdapterConfig.from_dict({**cfg.to_dict(), "rank": 3})


def test_osora_on_a_bf16_base_is_w0_up_to_rounding():
    from giva.osora import OsoraLinear
    lin = nn.Linear(32, 20, bias=False).to(torch.bfloat16)
    W0 = lin.weight.detach().clone()
    x = torch.randn(6, 32).to(torch.bfloat16)
    y0 = lin(x)
    cfg = AdapterConfig(method="osora", r=8, targets=["x"])
    layer = OsoraLinear(lin, cfg, "x", bases=OsoraLinear.layer_bases(lin, cfg, "x", None))
    assert layer.weight.dtype == torch.bfloat16 and layer.osora_S.dtype == torch.float32
    torch.testing.assert_close(layer.osora_S, torch.linalg.svdvals(W0.float())[:8])
    W_eff = layer.weight.float() + layer.delta_weight()
    assert (W_eff - W0.float()).abs().max() <= 2 ** -8 * W0.float().abs().max()  # bf16 rounding of W_res
    torch.testing.assert_close(layer(x), y0, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("method", METHODS)
def test_autocast_skips_only_a_redundant_cast(method):
    """Under autocast the forward leaves x in its dtype; the result equals the fp32-cast reference."""
    _, model = adapted_toy(method)
    randomize_trainables(model)
    model.to(torch.bfloat16)
    for layer in adapted_layers(model).values():
        for t in list(layer.trainable().values()):
            t.data = t.data.float()
    x = torch.randn(3, 5, 24).to(torch.bfloat16)
    layer = model.layers[0].self_attn.q_proj
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = (nn.functional.linear(x, layer.weight, layer.bias) + layer.branch(x.float())).to(x.dtype)
        assert torch.equal(layer(x), reference)
