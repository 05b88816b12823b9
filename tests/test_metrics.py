"""Metric functions against values worked out by hand (the arithmetic is in each comment)."""
import math

import pytest
import torch

from data.metrics import accuracy, matthews_corrcoef, pearson


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5  # 2 of 4
    assert accuracy(torch.tensor([2, 2, 0]), torch.tensor([2, 2, 0])) == 1.0


def test_matthews_binary_by_hand():
    # preds 1 1 1 0 0 0 0 1 vs labels 1 1 0 0 0 0 1 1: TP 3, TN 3, FP 1, FN 1
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4 * 4 * 4 * 4) = 8 / 16
    assert matthews_corrcoef([1, 1, 1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0, 1, 1]) == pytest.approx(0.5)
    # TP 1, TN 2, FP 2, FN 0: (1*2 - 2*0) / sqrt(3 * 1 * 4 * 2) = 2 / sqrt(24)
    assert matthews_corrcoef([1, 1, 1, 0, 0], [1, 0, 0, 0, 0]) == pytest.approx(2 / math.sqrt(24))
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_matthews_degenerate_and_multiclass():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictor: 0, as sklearn
    # 3 classes, preds 0 1 2 2, labels 0 1 1 2: c = 3, s = 4, p = (1, 1, 2), t = (1, 2, 1)
    # (3*4 - (1 + 2 + 2)) / sqrt((16 - 6) (16 - 6)) = 7 / 10
    assert matthews_corrcoef([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(0.7)


def test_pearson_by_hand():
    # x = 1 2 3, y = 1 3 2: means 2, 2; sxy = (-1)(-1) + 0 + (1)(0) = 1; sxx = 2, syy = 2; r = 1/2
    assert pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert pearson([0.5, 1.5, 2.5], [10.0, 20.0, 30.0]) == pytest.approx(1.0)  # exact linear relation
    assert math.isnan(pearson([1.0, 1.0], [0.0, 2.0]))  # no variance: undefined, nan as scipy


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 predictions, 2 labels"):
        accuracy([1, 0, 1], [1, 0])
