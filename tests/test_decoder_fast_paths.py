"""The training fast paths compute the same function: activation checkpointing and compiled blocks."""
import pytest
import torch

from models import Decoder, load_model, write_random_checkpoint


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def olmo2(tmp_path):
    write_random_checkpoint(tmp_path, "olmo2", seed=0)
    return load_model(tmp_path).train()


def test_activation_checkpointing_same_loss_and_grads(olmo2):
    ids = torch.randint(0, olmo2.cfg.vocab_size, (2, 12))
    ref_loss, ref_grads = loss_and_grads(olmo2, ids)
    olmo2.set_activation_checkpointing(True)
    loss, grads = loss_and_grads(olmo2, ids)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=0, atol=1e-6, msg=n)


def test_compiled_blocks_same_loss_and_grads(olmo2):
    ids = torch.randint(0, olmo2.cfg.vocab_size, (2, 12))
    ref_loss, ref_grads = loss_and_grads(olmo2, ids)
    olmo2.compile_blocks()
    loss, grads = loss_and_grads(olmo2, ids)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=n)
    assert list(olmo2.state_dict()) == list(Decoder(olmo2.cfg).state_dict())  # compiling renames nothing
