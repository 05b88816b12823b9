"""methods.md 11.2 T8: the first-step gradient probe."""
import pytest
import torch

from giva import estimate_gradients
from giva_toy import ToyLM, lm_loss, toy_batches

TARGETS = ["q_proj", "v_proj", "down_proj"]


def plain_gradient(model, batch):
    """A plain full-fine-tuning backward: every parameter requires grad, no hooks."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    lm_loss(model, batch).backward()
    grads = {n.removesuffix(".weight"): p.grad.clone() for n, p in model.named_parameters()
             if n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight"))}
    model.zero_grad(set_to_none=True)
    return grads


def test_exactly_k_batches_are_consumed():
    seen = []

    def stream():
        for i, b in enumerate(toy_batches(5)):
            seen.append(i)
            yield b

    estimate_gradients(ToyLM(), stream(), lm_loss, TARGETS)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("offload", [False, True])
def test_equals_mean_of_plain_per_batch_gradients(offload):
    model = ToyLM()
    batches = toy_batches(3)
    per_batch = [plain_gradient(model, b) for b in batches]
    for p in model.parameters():
        p.requires_grad_(False)
    model.embed_tokens.weight.requires_grad_(True)  # a state the probe must restore
    model.eval()
    grads = estimate_gradients(model, batches, lm_loss, TARGETS, offload_to_cpu=offload)
    assert set(grads) == {f"layers.{i}.{m}" for i in range(2)
                          for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    for name, g in grads.items():
        assert g.dtype == torch.float32 and g.device.type == "cpu"
        torch.testing.assert_close(g, sum(pb[name] for pb in per_batch) / 3, rtol=1e-5, atol=1e-7)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["embed_tokens.weight"]
    assert not model.training
    assert all(p.grad is None for p in model.parameters())  # the hooks freed every target gradient


def test_token_weighted_average():
    """loss_fn returning (mean loss, n_tokens) weights each batch by its token count."""
    model = ToyLM()
    batches = [toy_batches(1, batch=2, seed=1)[0], toy_batches(1, batch=5, seed=2)[0]]
    per_batch = [plain_gradient(model, b) for b in batches]
    n = [b[:, 1:].numel() for b in batches]
    grads = estimate_gradients(model, batches, lambda m, b: (lm_loss(m, b), b[:, 1:].numel()), TARGETS)
    for name, g in grads.items():
        expected = (n[0] * per_batch[0][name] + n[1] * per_batch[1][name]) / (n[0] + n[1])
        torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)
    # the token-weighted mean is the gradient of the token-normalised loss over both batches together
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    total = sum(lm_loss(model, b) * k for b, k in zip(batches, n)) / sum(n)
    total.backward()
    torch.testing.assert_close(grads["layers.1.mlp.down_proj"], model.layers[1].mlp.down_proj.weight.grad,
                               rtol=1e-5, atol=1e-7)


def test_bad_inputs_are_clear_errors():
    model = ToyLM()
    with pytest.raises(ValueError, match="at least one"):
        estimate_gradients(model, [], lm_loss, TARGETS)
    calls = []

    def nan_on_second(m, b):
        calls.append(1)
        return lm_loss(m, b) * (float("nan") if len(calls) == 2 else 1.0)

    with pytest.raises(ValueError, match="probe batch 1: the loss is nan"):
        estimate_gradients(model, toy_batches(2), nan_on_second, TARGETS)
    assert all(p.requires_grad for p in model.parameters())  # restored after the error
    with pytest.raises(ValueError, match="matches no module"):
        estimate_gradients(model, toy_batches(1), lm_loss, ["qkv_proj"])


def test_tied_targets_are_an_error():
    model = ToyLM()
    model.layers[0].mlp.up_proj.weight = model.layers[1].mlp.up_proj.weight  # tied, as lm_head to embeddings
    with pytest.raises(ValueError, match="layers.0.mlp.up_proj and layers.1.mlp.up_proj share one weight"):
        estimate_gradients(model, toy_batches(1), lm_loss, ["up_proj"])
