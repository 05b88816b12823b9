"""GiVA end to end on our Decoder, loaded from a tiny random checkpoint in the publisher layout:
load -> probe -> SVD bases -> inject -> train step -> save -> reload onto a fresh base -> merge."""
import torch
import torch.nn.functional as F

from giva import (AdapterConfig, adapter_parameters, check_optimizer, estimate_gradients,
                  load_adapter, merge_adapters, save_adapter)
from giva_toy import adapt
from models import load_model, write_random_checkpoint

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def loss_fn(model, ids):
    logits = model(ids[:, :-1])  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_giva_on_decoder(tmp_path):
    """qwen2: tied embeddings and qkv biases, the family flags that touch the adapted layers."""
    ckpt = write_random_checkpoint(tmp_path / "ckpt", family="qwen2")
    model = load_model(ckpt)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.cfg.vocab_size, (2, 12), generator=g) for _ in range(2)]
    ids = batches[0]
    base_logits = model(ids).detach()

    grads = estimate_gradients(model, batches, loss_fn, TARGETS)
    checkpointed = estimate_gradients(model, batches, loss_fn, TARGETS, checkpoint_blocks="layers")
    assert len(grads) == 5 * model.cfg.n_layers
    for name in grads:
        torch.testing.assert_close(checkpointed[name], grads[name], rtol=1e-5, atol=1e-8)

    adapt(model, AdapterConfig(method="giva", r=8, targets=TARGETS, init="secsv"), grads)
    assert torch.equal(model(ids), base_logits)
    opt = torch.optim.AdamW(adapter_parameters(model), lr=1e-2)
    check_optimizer(opt, model)
    loss_fn(model, ids).backward()
    opt.step()
    trained = model(ids).detach()
    assert not torch.allclose(trained, base_logits)

    save_adapter(model, tmp_path / "bases.safetensors", include_trainable=False)
    save_adapter(model, tmp_path / "step1.safetensors", include_bases=False)
    fresh = load_model(ckpt)
    load_adapter(fresh, [tmp_path / "bases.safetensors", tmp_path / "step1.safetensors"])
    assert torch.equal(fresh(ids), trained)
    merge_adapters(fresh)
    torch.testing.assert_close(fresh(ids), trained, rtol=1e-4, atol=1e-5)
