"""models/lm_loss.py equals F.cross_entropy on the full logits: loss, hidden gradient, head gradient."""
import pytest
import torch
import torch.nn.functional as F

from models.lm_loss import IGNORE, linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("head_trains", [False, True])
def test_matches_full_logits(chunk, head_trains):
    N, D, V = 29, 16, 50
    hidden = torch.randn(N, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=head_trains)
    targets = torch.randint(0, V, (N,))
    targets[[0, 3, 4, 28]] = IGNORE
    total = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    (3.0 * total).backward()  # a non-unit upstream gradient
    got = hidden.grad.clone(), (weight.grad.clone() if head_trains else None)
    hidden.grad = None
    weight.grad = None
    ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE, reduction="sum")
    (3.0 * ref).backward()
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(got[0], hidden.grad)
    if head_trains:
        torch.testing.assert_close(got[1], weight.grad)


def test_all_ignored_rows_give_zero():
    hidden = torch.randn(5, 4, requires_grad=True)
    total = linear_cross_entropy(hidden, torch.randn(9, 4), torch.full((5,), IGNORE))
    total.backward()
    assert total.item() == 0.0 and not hidden.grad.any()
