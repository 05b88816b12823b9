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


def build_example(tok, prompt: str, output: str, max_tokens: int, boundary: str = "official") -> tuple[list[int], int]:
    """(ids, n_masked) for one training example, truncated to its LAST max_tokens tokens.

    boundary "official": n_masked = 1 + len(tok(prompt)), the prompt tokenised alone, as the official code.
    When BPE merges across the prompt/response boundary this masks the response's first token (methods.md
    section 9, bug 18). With OLMo-2's tokenizer that is most examples (1,943 of the first 2,000 GSM8K train
    answers): the prompt alone ends with a lone " " token that joins a response's first word.
    boundary "common_prefix": n_masked = 1 + the number of leading tokens tok(prompt) and tok(prompt + output)
    share, so the token that straddles the boundary is a target.
    Keeping the last tokens per example equals the official column truncation of a left-padded batch,
    since left padding aligns every row's end.
    """
    bos, eos, _ = special_ids(tok)
    full, alone = tok.encode(prompt + output), tok.encode(prompt)
    if boundary == "official":
        n_prompt = len(alone)
    else:
        n_prompt = next((i for i, (a, b) in enumerate(zip(alone, full)) if a != b), min(len(alone), len(full)))
    ids, n_masked = [bos] + full + [eos], 1 + n_prompt
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
