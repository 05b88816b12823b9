"""Adapter files: bases once, trainable tensors per checkpoint, exact reload, clear errors."""
import copy

import pytest
import torch
from torch import nn

from giva import (AdapterConfig, adapted_layers, apply_adapters, compute_bases, estimate_gradients, load_adapter,
                  save_adapter)
from giva_toy import ToyLM, lm_loss, toy_batches
from data.safetensors_io import SafetensorsFile

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
METHODS = ["giva", "vera", "osora", "randlora", "lora", "full"]


def trained_toy(method):
    """(pristine base model, adapted model with non-trivial trainable tensors)."""
    model = ToyLM()
    pristine = copy.deepcopy(model)
    cfg = AdapterConfig(method=method, r=4, targets=TARGETS, alpha=8.0, svd_seed=3, vera_seed=3, randlora_seed=3, lora_seed=3)
    grads = estimate_gradients(model, toy_batches(1), lm_loss, TARGETS) if method == "giva" else None
    apply_adapters(model, cfg, compute_bases(model, cfg, grads))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return pristine, model


@pytest.mark.parametrize("method", METHODS)
def test_reload_onto_base_model_reproduces_outputs(method, tmp_path):
    pristine, model = trained_toy(method)
    ids = toy_batches(1, seed=4)[0]
    save_adapter(model, tmp_path / "a.safetensors")
    load_adapter(pristine, tmp_path / "a.safetensors")
    assert torch.equal(pristine(ids), model(ids))
    assert [n for n, p in pristine.named_parameters() if p.requires_grad] == \
           [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["giva", "vera", "osora", "randlora", "lora"])
def test_bases_once_then_trainable_per_checkpoint(method, tmp_path):
    pristine, model = trained_toy(method)
    save_adapter(model, tmp_path / "bases.safetensors", include_trainable=False)
    save_adapter(model, tmp_path / "step10.safetensors", include_bases=False)
    bases = set(SafetensorsFile(tmp_path / "bases.safetensors").keys())
    step = set(SafetensorsFile(tmp_path / "step10.safetensors").keys())
    assert not bases & step
    shared = {k for k in bases if k.startswith("shared.")}
    assert shared == ({"shared.vera_A", "shared.vera_B"} if method == "vera" else
                      {"shared.randlora_A", "shared.randlora_B"} if method == "randlora" else set())
    names = {k.rsplit(".", 1)[-1] for k in step}
    assert names == {"giva": {"giva_lambda_o", "giva_lambda_s"}, "vera": {"vera_lambda_b", "vera_lambda_d"},
                     "osora": {"osora_lambda_b", "osora_lambda_d"}, "randlora": {"randlora_lambda", "randlora_gamma"},
                     "lora": {"lora_A", "lora_B"}}[method]
    load_adapter(pristine, [tmp_path / "bases.safetensors", tmp_path / "step10.safetensors"])
    ids = toy_batches(1, seed=4)[0]
    assert torch.equal(pristine(ids), model(ids))


def test_resume_loads_trainable_tensors_into_existing_adapters(tmp_path):
    pristine, model = trained_toy("vera")
    save_adapter(model, tmp_path / "step.safetensors", include_bases=False)
    apply_adapters(pristine, model.adapter_config)  # same seed: same shared bases
    load_adapter(pristine, tmp_path / "step.safetensors")
    ids = toy_batches(1, seed=4)[0]
    assert torch.equal(pristine(ids), model(ids))


def test_config_is_stored_as_metadata(tmp_path):
    _, model = trained_toy("giva")
    save_adapter(model, tmp_path / "a.safetensors")
    meta = SafetensorsFile(tmp_path / "a.safetensors").metadata
    assert meta["format"] == "giva-adapter/1" and '"method": "giva"' in meta["adapter_config"]


def test_other_shapes_are_a_clear_error(tmp_path):
    _, model = trained_toy("giva")
    save_adapter(model, tmp_path / "a.safetensors")
    other = ToyLM()
    other.layers[1].mlp.down_proj = nn.Linear(40, 30, bias=False)
    with pytest.raises(ValueError, match=r"tensor 'layers.1.mlp.down_proj.giva_\w+' has shape \(\d+(, \d+|,)\) "
                                         r"but the model's is \(\d+(, \d+|,)\)"):
        load_adapter(other, tmp_path / "a.safetensors")


def test_missing_and_unexpected_tensors_are_errors(tmp_path):
    _, model = trained_toy("giva")
    save_adapter(model, tmp_path / "step.safetensors", include_bases=False)
    with pytest.raises(ValueError, match=r"adapter tensor\(s\) \['layers.0.mlp.down_proj.giva_A'"):
        load_adapter(ToyLM(), tmp_path / "step.safetensors")  # GiVA's bases cannot be regenerated
    save_adapter(model, tmp_path / "a.safetensors")
    fewer = ToyLM()
    fewer.layers = fewer.layers[:1]
    with pytest.raises(ValueError, match=r"\[.layers.1.mlp.down_proj.giva_A., .*\] match nothing in the model"):
        load_adapter(fewer, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="config .* differs from the model's"):
        other = ToyLM()
        apply_adapters(other, AdapterConfig(method="vera", r=4, targets=TARGETS))
        load_adapter(other, tmp_path / "a.safetensors")


def test_merged_model_refuses_a_load(tmp_path):
    _, model = trained_toy("lora")
    save_adapter(model, tmp_path / "a.safetensors")
    for layer in adapted_layers(model).values():
        layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        load_adapter(model, tmp_path / "a.safetensors")


@pytest.mark.parametrize("method", METHODS)
def test_an_adapter_is_bound_to_its_base_model(method, tmp_path):
    """Onto another base of the same shapes (another init) the load is refused, naming the file, unless
    allowed; a bf16 copy of its own base is still its base."""
    pristine, model = trained_toy(method)
    save_adapter(model, tmp_path / "a.safetensors")
    torch.manual_seed(123)
    other = ToyLM()
    with pytest.raises(ValueError, match="a.safetensors: this adapter was trained on another base model"):
        load_adapter(other, tmp_path / "a.safetensors")
    load_adapter(ToyLM(), tmp_path / "a.safetensors", allow_other_base=True)
    load_adapter(copy.deepcopy(pristine).to(torch.bfloat16), tmp_path / "a.safetensors")


def test_adapter_metadata_that_is_not_json_names_the_file(tmp_path):
    from data.safetensors_io import save_safetensors
    save_safetensors(tmp_path / "a.safetensors", {"x": torch.zeros(1)},
                     {"format": "giva-adapter/1", "adapter_config": "{not json"})
    with pytest.raises(ValueError, match="a.safetensors: adapter_config metadata is not JSON"):
        load_adapter(ToyLM(), tmp_path / "a.safetensors")
