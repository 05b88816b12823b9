"""GLUE metrics in plain Python over lists or 1-D tensors: accuracy, Matthews correlation, Pearson.

Conventions follow sklearn/scipy so numbers compare with published GLUE scores: the Matthews
correlation of a predictor with no variance (or labels with none) is 0.0, as sklearn returns;
Pearson's r is undefined then and we return nan, as scipy does (without its warning).
"""
import math
from collections import Counter


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _check(preds, labels) -> tuple[list, list]:
    preds, labels = _as_list(preds), _as_list(labels)
    if len(preds) != len(labels) or not preds:
        raise ValueError(f"metrics need equal, non-zero lengths: {len(preds)} predictions, {len(labels)} labels")
    return preds, labels


def accuracy(preds, labels) -> float:
    preds, labels = _check(preds, labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def matthews_corrcoef(preds, labels) -> float:
    """Gorodkin's multi-class MCC from the confusion matrix (the binary phi coefficient for two classes):
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), with c correct, s samples,
    p_k the times class k was predicted and t_k the times it truly occurs."""
    preds, labels = _check(preds, labels)
    s = len(labels)
    c = sum(p == y for p, y in zip(preds, labels))
    p, t = Counter(preds), Counter(labels)
    classes = set(p) | set(t)
    cov_pt = c * s - sum(p[k] * t[k] for k in classes)
    cov_pp = s * s - sum(v * v for v in p.values())
    cov_tt = s * s - sum(v * v for v in t.values())
    return 0.0 if cov_pp * cov_tt == 0 else cov_pt / math.sqrt(cov_pp * cov_tt)


def pearson(preds, labels) -> float:
    preds, labels = _check(preds, labels)
    n = len(preds)
    mx, my = sum(preds) / n, sum(labels) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(preds, labels))
    sxx = sum((x - mx) ** 2 for x in preds)
    syy = sum((y - my) ** 2 for y in labels)
    return math.nan if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


METRICS = {"accuracy": accuracy, "matthews": matthews_corrcoef, "pearson": pearson}
