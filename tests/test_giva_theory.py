"""methods.md 11.2 T1-T3: the surrogate identity of the Appendix-A theorem, the autograd identities at
init, and the exact first SGD step with its row space."""
import pytest
import torch

from giva import AdapterConfig, adapted_layers, estimate_gradients
from giva.giva_linear import giva_bases
from giva_toy import ToyLM, adapt, lm_loss, toy_batches

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def decaying_matrix(m, n, power=0.7, dtype=torch.float64):
    """G = U diag(sigma) V^T with sigma_i = i^-power, U and V random orthonormal."""
    U, _ = torch.linalg.qr(torch.randn(m, m, dtype=dtype))
    V, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype))
    k = min(m, n)
    sigma = torch.arange(1, k + 1, dtype=dtype) ** -power
    return U[:, :k] @ torch.diag(sigma) @ V[:, :k].T, sigma


def surrogate(G, A, B):
    """||G A^T B^T B A - G||_F, the objective of problem (4)."""
    return torch.linalg.norm(G @ A.T @ B.T @ B @ A - G)


def test_t1_surrogate_identity_exact_svd():
    m, n, r = 64, 48, 8
    G, sigma = decaying_matrix(m, n)
    bound = sigma[r:].pow(2).sum().sqrt()
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    A = Vh[:r]  # (r, n) = V_r^T
    for B in (U[:, :r], U[:, r:2 * r], torch.linalg.qr(torch.randn(m, r, dtype=G.dtype))[0]):
        torch.testing.assert_close(surrogate(G, A, B), bound, rtol=1e-5, atol=0)
    A_rand = torch.linalg.qr(torch.randn(n, r, dtype=G.dtype))[0].T  # random orthonormal rows
    assert surrogate(G, A_rand, U[:, :r]) > bound * 1.05


@pytest.mark.parametrize("init", ["topsv", "secsv", "rand"])
def test_t1_surrogate_identity_svd_lowrank(init):
    m, n, r = 64, 48, 8
    G, sigma = decaying_matrix(m, n)
    G = G.float()
    bound = sigma[r:].pow(2).sum().sqrt().float()
    A, B = giva_bases(G, r, init, seed=3)
    assert A.shape == (r, n) and B.shape == (m, r)
    torch.testing.assert_close(A @ A.T, torch.eye(r), atol=1e-5, rtol=0)  # orthonormal rows
    torch.testing.assert_close(B.T @ B, torch.eye(r), atol=1e-5, rtol=0)
    torch.testing.assert_close(surrogate(G, A, B), bound, rtol=1e-3, atol=0)
    V_r = torch.linalg.svd(G.double(), full_matrices=False)[2][:r].T  # (n, r) exact
    cos_angles = torch.linalg.svdvals(V_r.T @ A.double().T)  # cosines of the principal angles
    largest_angle = torch.arccos(cos_angles.min().clamp(max=1.0))
    print(f"largest principal angle between svd_lowrank and exact V_r: {largest_angle.item():.2e} rad")
    assert largest_angle < 1e-2


@pytest.fixture
def giva_at_init():
    """The toy LM, its probe gradient G on one batch, and GiVA applied from G."""
    model = ToyLM()
    batch = toy_batches(1)[0]
    grads = estimate_gradients(model, [batch], lm_loss, TARGETS)
    G = {k: v.clone() for k, v in grads.items()}
    adapt(model, AdapterConfig(method="giva", r=4, targets=TARGETS, init="secsv"), grads)
    return model, batch, G


def test_t2_gradient_identities_at_init(giva_at_init):
    model, batch, G = giva_at_init
    model.train()
    lm_loss(model, batch).backward()
    for name, layer in adapted_layers(model).items():
        assert torch.equal(layer.giva_lambda_s.grad, torch.zeros_like(layer.giva_lambda_s))
        d = ((G[name] @ layer.giva_A.T) * layer.giva_B).sum(1)  # diag(G A^T B^T), (m,)
        torch.testing.assert_close(layer.giva_lambda_o.grad, d, rtol=1e-4, atol=1e-7)


def test_t3_exact_first_sgd_step(giva_at_init):
    model, batch, G = giva_at_init
    lr = 0.05
    layers = adapted_layers(model)
    params = [p for layer in layers.values() for p in layer.trainable().values()]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    lm_loss(model, batch).backward()
    opt.step()
    for name, layer in layers.items():
        A, B, g = layer.giva_A, layer.giva_B, G[name]
        assert torch.equal(layer.giva_lambda_s, torch.ones_like(layer.giva_lambda_s))
        d = ((g @ A.T) * B).sum(1)  # (m,)
        dW1 = layer.delta_weight()
        torch.testing.assert_close(dW1, -lr * d[:, None] * B @ A, rtol=1e-4, atol=1e-8)
        outside = dW1 @ (torch.eye(A.shape[1]) - A.T @ A)  # the part of dW1's rows outside span(V_r)
        # zero in exact arithmetic; in fp32 each entry is a length-n dot product of magnitude <= max|dW1|, so
        # its rounding (and A's orthonormality, itself from fp32 QR) is a few n * eps relative to max|dW1|
        n, eps = A.shape[1], torch.finfo(torch.float32).eps
        assert outside.abs().max() <= 4 * n * eps * dW1.abs().max()
        U, S, Vh = torch.linalg.svd(g, full_matrices=False)
        r = A.shape[0]
        G_r = U[:, :r] * S[:r] @ Vh[:r]
        cos = lambda X, Y: (X * Y).sum() / (X.norm() * Y.norm())
        print(f"{name}: cos(dW1, -G) = {cos(dW1, -g):.3f}, cos(G_r, G) = {cos(G_r, g):.3f}")
