"""Cross-entropy through the LM head without holding the (tokens, vocab) logits or recomputing them.

The forward pass walks the rows in chunks: logits of one chunk (rows, V) in fp32, their log-sum-exp, the
loss, and right away the gradient of the loss w.r.t. the chunk's hidden states,
    d loss / d h = (softmax(logits) - onehot(target)) W        (rows, D)
which is all the backward pass needs when the head is frozen (every PEFT method). So the head's matmul runs
twice in all (forward, gradient) instead of three times (forward, recompute, gradient), and at most one
chunk of fp32 logits lives at a time. When the head trains (full fine-tuning) its gradient
(softmax - onehot)^T h is accumulated the same way, in fp32.
"""
import torch
import torch.nn.functional as F

IGNORE = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        # hidden (N, D), weight (V, D), targets (N,) with IGNORE where no loss is taken
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, D)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk].to(weight.dtype), targets[s:s + chunk]  # (n, D), (n,)
            logits = F.linear(h, weight).float()  # (n, V)
            valid = t != IGNORE  # (n,)
            safe_t = t.clamp(min=0)[:, None]  # (n, 1)
            lse = logits.logsumexp(-1)  # (n,)
            total += ((lse - logits.gather(1, safe_t)[:, 0]) * valid).sum()
            if need_h or need_w:
                p = logits.sub_(lse[:, None]).exp_()  # (n, V) softmax, in place of the logits
                p.scatter_add_(1, safe_t, -torch.ones_like(safe_t, dtype=p.dtype))  # softmax - onehot
                p = (p * valid[:, None]).to(weight.dtype)  # rows without a target give no gradient
                if need_h:
                    grad_h[s:s + chunk] = p @ weight  # (n, D)
                if need_w:
                    grad_w += p.T.float() @ h.float()  # (V, D)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
                None if grad_w is None else (grad_w * grad_total).to(ctx.weight_dtype), None, None)


def linear_cross_entropy(hidden, weight, targets, chunk: int = 4096):
    """Sum over rows of cross_entropy(hidden @ weight.T, targets), IGNORE rows excluded.

    hidden (N, D), weight (V, D), targets (N,) long. `chunk` rows are processed at a time.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)


def chunked_cross_entropy(hidden, lm_head, labels, chunk: int):
    """Sum of next-token losses over the labelled positions, and their count, without ever holding the
    whole (B, T, V) fp32 logits: linear_cross_entropy takes `chunk` sequence positions of every row at a time
    and computes the gradient w.r.t. the hidden states as it goes (no recomputation in the backward).
    hidden (B, T, D); labels (B, T) aligned with the inputs (HF convention), IGNORE where no loss."""
    B, T, _ = hidden.shape
    # hidden[t] predicts token t+1; the last position predicts nothing (IGNORE), which keeps hidden a view
    targets = torch.cat([labels[:, 1:], labels.new_full((B, 1), IGNORE)], dim=1)  # (B, T)
    total = linear_cross_entropy(hidden.flatten(0, 1), lm_head.weight, targets.flatten(), chunk=chunk * B)
    return total, (targets != IGNORE).sum()

