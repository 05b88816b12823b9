"""Injection: suffix matching, clear target errors, freezing, state-dict keys, the parameter table and
the optimizer check."""
import pytest
import torch

from giva import (AdapterConfig, adapter_parameters, apply_adapters, check_optimizer, count_parameters,
                  estimate_gradients, find_targets, parameter_table)
from giva_toy import ToyLM, adapt, lm_loss, toy_batches


def test_targets_match_by_name_suffix():
    model = ToyLM()
    assert list(find_targets(model, ["q_proj", "lm_head"])) == [
        "layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj", "lm_head"]
    assert list(find_targets(model, ["layers.1.mlp.up_proj"])) == ["layers.1.mlp.up_proj"]
    with pytest.raises(ValueError, match="target 'proj' matches no module; the nn.Linear layers are: q_proj x2 "
                                         r"\(e.g. layers.0.self_attn.q_proj\)"):
        find_targets(model, ["proj"])  # a suffix is a whole name component, not a substring
    with pytest.raises(ValueError, match="matches layers.0.norm, a LayerNorm, not an nn.Linear"):
        find_targets(model, ["norm"])


def test_freezing_keeps_base_state_dict_keys():
    model = ToyLM()
    before = model.state_dict()
    apply_adapters(model, AdapterConfig(method="vera", r=4, targets=["q_proj", "down_proj"]))
    after = model.state_dict()
    assert set(before) <= set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(set(after) - set(before)) == sorted(
        f"layers.{i}.{m}.vera_lambda_{v}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")
        for v in "bd")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == sorted(set(after) - set(before), key=trainable.index)
    with pytest.raises(ValueError, match="already has 'vera' adapters"):
        apply_adapters(model, AdapterConfig(method="lora", r=4, targets=["k_proj"], alpha=1.0))


def test_giva_needs_gradients_for_every_target():
    with pytest.raises(ValueError, match="method 'giva' needs grads"):
        adapt(ToyLM(), AdapterConfig(method="giva", r=2, targets=["q_proj"]))
    with pytest.raises(ValueError, match="need the bases of compute_bases"):
        apply_adapters(ToyLM(), AdapterConfig(method="giva", r=2, targets=["q_proj"]))
    model = ToyLM()
    grads = estimate_gradients(model, toy_batches(1), lm_loss, ["q_proj"])
    other = ToyLM()
    with pytest.raises(ValueError, match=r"no gradient for target layer\(s\) \['layers.0.self_attn.v_proj'"):
        adapt(other, AdapterConfig(method="giva", r=2, targets=["q_proj", "v_proj"]), grads)
    assert not hasattr(other, "adapter_config")  # checked before the model was touched
    wrong = {f"layers.{i}.self_attn.k_proj": torch.zeros(24, 24) for i in range(2)}
    with pytest.raises(ValueError, match=r"gradient for layers.0.self_attn.k_proj has shape \(24, 24\), "
                                         r"its weight \(8, 24\)"):
        adapt(other, AdapterConfig(method="giva", r=2, targets=["k_proj"]), wrong)


def test_gradients_are_freed_as_bases_are_made():
    model = ToyLM()
    grads = estimate_gradients(model, toy_batches(1), lm_loss, ["q_proj", "up_proj"])
    adapt(model, AdapterConfig(method="giva", r=2, targets=["q_proj", "up_proj"]), grads)
    assert grads == {}


def test_parameter_table_and_counts():
    model = ToyLM()
    base_total = sum(p.numel() for p in model.parameters())
    apply_adapters(model, AdapterConfig(method="vera", r=4, targets=["q_proj", "up_proj"]))
    c = count_parameters(model)
    # VeRA: r + m per layer. q_proj: 4 + 24, up_proj: 4 + 40, two layers each
    assert c["per_target"] == {"q_proj": (2, 56), "up_proj": (2, 88)}
    assert c["trainable"] == 144 and c["total"] == base_total + 144
    table = parameter_table(model)
    assert "q_proj" in table and "up_proj" in table and "144" in table
    assert f"{100 * 144 / (base_total + 144):.3f}%" in table


def test_optimizer_check():
    model = ToyLM()
    apply_adapters(model, AdapterConfig(method="lora", r=2, targets=["v_proj"], alpha=4.0))
    params = adapter_parameters(model)
    assert len(params) == 4  # lora_A, lora_B in two layers
    check_optimizer(torch.optim.AdamW(params, lr=1e-3), model)
    with pytest.raises(RuntimeError, match=r"non-adapter tensors in the optimizer \['lm_head.weight'\]"):
        check_optimizer(torch.optim.AdamW(params + [model.lm_head.weight], lr=1e-3), model)
    with pytest.raises(RuntimeError, match="adapter tensors missing from it"):
        check_optimizer(torch.optim.AdamW(params[:3], lr=1e-3), model)
    model.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"non-adapter tensors that require grad \['lm_head.weight'\]"):
        check_optimizer(torch.optim.AdamW(params, lr=1e-3), model)


def test_full_fine_tuning_trains_everything():
    model = ToyLM()
    apply_adapters(model, AdapterConfig(method="full"))
    assert all(p.requires_grad for p in model.parameters())
    check_optimizer(torch.optim.AdamW(adapter_parameters(model)), model)
    assert count_parameters(model)["trainable"] == sum(p.numel() for p in model.parameters())


def test_bases_left_unset_are_nan_not_silent():
    """build_adapters wraps without the data-dependent init; a GiVA layer whose bases were never filled
    must not quietly act like an adapter (the official code keeps random bases and lambda = 1)."""
    from giva.inject import build_adapters
    model = ToyLM()
    build_adapters(model, AdapterConfig(method="giva", r=2, targets=["q_proj"]))
    assert torch.isnan(model(toy_batches(1)[0])).all()


def test_tied_target_weight_is_an_error():
    model = ToyLM()
    model.lm_head.weight = model.embed_tokens.weight  # tied embeddings, as Qwen2-0.5B
    with pytest.raises(ValueError, match=r"target lm_head: its weight is tied to \['embed_tokens.weight'\]"):
        apply_adapters(model, AdapterConfig(method="vera", r=2, targets=["lm_head"]))


def test_parameter_table_shows_the_rank_each_target_uses():
    """GiVA's rank is capped per layer (SecSV-B needs 2r' singular vectors); the table says what was used."""
    from giva import find_targets
    model = ToyLM()
    cfg = AdapterConfig(method="giva", r=16, targets=["q_proj", "k_proj", "up_proj"], init="secsv")
    grads = {n: torch.randn(m.weight.shape) for n, m in find_targets(model, cfg.targets).items()}
    adapt(model, cfg, grads)
    c = count_parameters(model)
    # q (24 x 24): min(16, 24 // 2) = 12; k (8 x 24): min(16, 8 // 2) = 4; up (40 x 24): min(16, 24 // 2) = 12
    assert c["ranks"] == {"q_proj": (12, 12), "k_proj": (4, 4), "up_proj": (12, 12)}
    assert c["per_target"]["k_proj"] == (2, 2 * (4 + 8))  # r' + m per layer
    rows = {line.split()[0]: line.split() for line in parameter_table(model).splitlines()[2:]}
    assert rows["q_proj"][-1] == "12" and rows["k_proj"][-1] == "4"
