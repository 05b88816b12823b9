"""Wrapping one or two token sequences into an encoder's input: special tokens, token types, truncation.

    BERT     [CLS] a [SEP] b [SEP]      token types 0 for [CLS] a [SEP], 1 for b [SEP]
    RoBERTa  <s> a </s></s> b </s>      token types all 0
Truncation is HF's "longest_first" as its fast tokenizers compute it: when the pair is over budget,
the shorter side is kept whole if it fits in half the budget, otherwise both get half and the longer
side (the second one on a tie) gets the odd token.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class PairFormat:
    first: list[int]  # before a
    middle: list[int]  # between a and b
    last: list[int]  # after b, or after a when it is alone
    second_type: int  # the token type of the middle tokens after the first separator, b and the last tokens

    def specials(self, pair: bool) -> int:
        return len(self.first) + (len(self.middle) if pair else 0) + len(self.last)


def bert_pairs(cls_id: int, sep_id: int) -> PairFormat:
    return PairFormat(first=[cls_id], middle=[sep_id], last=[sep_id], second_type=1)


def roberta_pairs(bos_id: int, eos_id: int) -> PairFormat:
    return PairFormat(first=[bos_id], middle=[eos_id, eos_id], last=[eos_id], second_type=0)


def truncated_lengths(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths of a and b after longest-first truncation to `budget` tokens in all."""
    if n1 + n2 <= budget:
        return n1, n2
    short, long = sorted((n1, n2))
    if short < budget // 2:
        long = budget - short
    else:
        short, long = budget // 2, budget // 2 + budget % 2
    return (long, short) if n1 > n2 else (short, long)


def wrap_pair(a: list[int], b: list[int] | None, fmt: PairFormat, max_len: int) -> tuple[list[int], list[int]]:
    """-> (input ids, token type ids), at most max_len long."""
    budget = max_len - fmt.specials(b is not None)
    if budget < 1:
        raise ValueError(f"max_len {max_len} leaves no room for text beside the special tokens")
    if b is None:
        ids = fmt.first + a[:budget] + fmt.last
        return ids, [0] * len(ids)
    n1, n2 = truncated_lengths(len(a), len(b), budget)
    head = fmt.first + a[:n1]
    # BERT's first [SEP] has type 0; RoBERTa's types are all 0, so the split point does not matter there
    head, tail = head + fmt.middle[:1], fmt.middle[1:] + b[:n2] + fmt.last
    return head + tail, [0] * len(head) + [fmt.second_type] * len(tail)
