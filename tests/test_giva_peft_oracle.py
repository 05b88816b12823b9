"""Oracle: our LoRA, VeRA and RandLoRA against peft's on the same base model and the same bases.

peft's trainable tensors (randomised so dW != 0) and, for RandLoRA, its shared bases (cast to fp32) are
copied into ours; then outputs and the gradients of every trainable tensor must agree. VeRA's shared
bases are not copied: drawn from the same seed they must already be identical to peft's.
"""
import copy

import pytest
import torch

from giva import AdapterConfig, adapted_layers, apply_adapters
from giva_toy import ToyLM, lm_loss, toy_batches

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "up_proj", "down_proj"]


def peft_tensor(peft_model, key):
    """peft's `<module>.<tensor>.default[.weight]` for our `<module>.<tensor>`."""
    params = dict(peft_model.named_parameters())
    for k in (f"base_model.model.{key}.default", f"base_model.model.{key}.default.weight"):
        if k in params:
            return params[k]
    raise KeyError(key)


def pair(method, peft_config, our_config):
    base = ToyLM()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    ours = copy.deepcopy(base)
    apply_adapters(ours, our_config)
    return ours, theirs


def copy_trainables(ours, theirs):
    with torch.no_grad():
        for name, layer in adapted_layers(ours).items():
            for t, p in layer.trainable().items():
                p.copy_(peft_tensor(theirs, f"{name}.{t}"))


def assert_same_outputs_and_gradients(ours, theirs):
    ids = toy_batches(1, seed=2)[0]
    torch.testing.assert_close(ours(ids), theirs(ids), rtol=1e-5, atol=1e-6)
    lm_loss(ours, ids).backward()
    lm_loss(theirs, ids).backward()
    for name, layer in adapted_layers(ours).items():
        for t, p in layer.trainable().items():
            torch.testing.assert_close(p.grad, peft_tensor(theirs, f"{name}.{t}").grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_matches_peft(rslora):
    ours, theirs = pair("lora", peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_rslora=rslora),
                        AdapterConfig(method="lora", r=4, alpha=8.0, targets=TARGETS, use_rslora=rslora))
    copy_trainables(ours, theirs)
    assert_same_outputs_and_gradients(ours, theirs)


def test_vera_matches_peft_including_its_seeded_bases():
    ours, theirs = pair("vera", peft.VeraConfig(r=6, target_modules=TARGETS, projection_prng_key=11, d_initial=0.1),
                        AdapterConfig(method="vera", r=6, targets=TARGETS, vera_seed=11, d_initial=0.1))
    peft_layer = theirs.base_model.model.layers[0].self_attn.q_proj
    shared = ours.layers[0].self_attn.q_proj.shared
    assert torch.equal(shared.vera_A, peft_layer.vera_A["default"])
    assert torch.equal(shared.vera_B, peft_layer.vera_B["default"])
    copy_trainables(ours, theirs)
    assert_same_outputs_and_gradients(ours, theirs)


@pytest.mark.parametrize("r", [3, 8])
def test_randlora_matches_peft(r):
    ours, theirs = pair("randlora", peft.RandLoraConfig(r=r, randlora_alpha=4.0, target_modules=TARGETS),
                        AdapterConfig(method="randlora", r=r, alpha=4.0, targets=TARGETS))
    peft_layer = theirs.base_model.model.layers[0].self_attn.q_proj
    shared = ours.layers[0].self_attn.q_proj.shared
    assert shared.randlora_A.shape == peft_layer.randlora_A["default"].shape
    assert shared.randlora_B.shape == peft_layer.randlora_B["default"].shape
    with torch.no_grad():  # peft draws its bases in bf16: share them with ours in fp32, on both sides
        A, B = peft_layer.randlora_A["default"].float(), peft_layer.randlora_B["default"].float()
        peft_layer.randlora_A["default"], peft_layer.randlora_B["default"] = A, B
        shared.randlora_A.copy_(A)
        shared.randlora_B.copy_(B)
    copy_trainables(ours, theirs)
    assert_same_outputs_and_gradients(ours, theirs)
