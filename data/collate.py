"""Causal-LM sequences and their collation, as the official code builds them (methods.md section 8).

    ids    = [BOS] + tok(prompt + output) + [EOS]       (no other special tokens)
    labels = ids with the first n_masked = len(tok(prompt)) + 1 positions set to -100
    batch  : LEFT-padded; pad_mask True on real tokens; positions = cumsum(pad_mask) - 1, pads set to 1

Labels are aligned with the inputs (HF convention): the loss shifts them, hidden[t] predicts labels[t + 1].
"""
import torch

IGNORE = -100


def special_ids(tok) -> tuple[int, int, int]:
    """(bos, eos, pad) as the official code resolves them: pad is the tokenizer's pad (load_tokenizer
    already falls back to config.json's), else EOS; BOS falls back the same way when the model has none."""
    if tok.eos_id is None:
        raise ValueError("the tokenizer has no EOS token: a causal-LM example needs one")
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    bos = tok.bos_id if tok.bos_id is not None else pad
    return bos, tok.eos_id, pad


def build_example(tok, prompt: str, output: str, max_tokens: int) -> tuple[list[int], int]:
    """(ids, n_masked) for one training example, truncated to its LAST max_tokens tokens.

    n_masked counts BOS + the prompt tokenised alone, as the official code does; when BPE merges across
    the prompt/response boundary this is off by one (methods.md section 9, bug 18), which we keep for
    parity. Keeping the last tokens per example equals the official column truncation of a left-padded
    batch, since left padding aligns every row's end.
    """
    bos, eos, _ = special_ids(tok)
    ids = [bos] + tok.encode(prompt + output) + [eos]
    n_masked = len(tok.encode(prompt)) + 1
    if len(ids) > max_tokens:
        n_masked = max(0, n_masked - (len(ids) - max_tokens))
        ids = ids[-max_tokens:]
    return ids, n_masked


def collate_left_padded(examples, pad_id: int) -> dict:
    """examples: (ids 1-D int tensor, n_masked) pairs -> input_ids, labels, pad_mask, positions (B, T)."""
    lengths = [len(ids) for ids, _ in examples]
    B, T = len(examples), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    pad_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, ((ids, n_masked), n) in enumerate(zip(examples, lengths)):
        start = T - n
        input_ids[i, start:] = torch.as_tensor(ids, dtype=torch.long)
        labels[i, start + n_masked:] = input_ids[i, start + n_masked:]
        pad_mask[i, start:] = True
    positions = (pad_mask.long().cumsum(1) - 1).masked_fill_(~pad_mask, 1)  # (B, T)
    return {"input_ids": input_ids, "labels": labels, "pad_mask": pad_mask, "positions": positions}
