"""segen_edge.metrics: ConfusionMatrix and score_masks against hand-computed counts (numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segen_edge.metrics import IGNORE_INDEX, ConfusionMatrix, score_masks


def test_hand_computed_matrix_and_scores() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = ConfusionMatrix(3).update(truth, pred)
    # rows truth, columns prediction; the 255 pixel is ignored
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_allclose(cm.iou(), [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(cm.dice(), [2 / 3, 4 / 5, 1.0])
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert cm.mean_dice() == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)


def test_streaming_equals_one_batch() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (6, 7, 5))
    pred = rng.integers(0, 4, (6, 7, 5))
    whole = ConfusionMatrix(4).update(truth, pred)
    parts = ConfusionMatrix(4)
    for t, p in zip(truth, pred, strict=True):
        parts.update(t, p.reshape(-1))  # shapes may differ, sizes must not
    np.testing.assert_array_equal(whole.matrix, parts.matrix)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 0, 1]), np.array([0, 1, 1]))
    iou = cm.iou()
    assert math.isnan(iou[2]) and math.isnan(cm.dice()[2])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 2) / 2)
    summary = cm.as_dict(["a", "b", "c"])
    assert summary["iou"]["c"] is None and summary["miou"] == pytest.approx(0.5)


def test_class_predicted_but_absent_in_truth_scores_zero() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 0]), np.array([0, 2]))
    np.testing.assert_allclose(cm.iou(), [0.5, np.nan, 0.0])


def test_prediction_outside_classes_counts_as_wrong() -> None:
    cm = ConfusionMatrix(2).update(np.array([0, 1]), np.array([0, 7]))
    assert cm.pixel_accuracy() == pytest.approx(0.5)
    assert cm.iou()[1] == 0.0


def test_size_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shapes"):
        ConfusionMatrix(2).update(np.zeros(3), np.zeros(4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60))
def test_matches_a_python_count(pairs: list[tuple[int, int]]) -> None:
    truth = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    cm = ConfusionMatrix(3).update(truth, pred)
    expected = np.zeros((3, 3), dtype=np.int64)
    for t, p in pairs:
        expected[t, p] += 1
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.pixel_accuracy() == pytest.approx(np.trace(expected) / len(pairs))
    present = [c for c in range(3) if expected[c].sum() + expected[:, c].sum() > 0]
    for c in range(3):
        union = expected[c].sum() + expected[:, c].sum() - expected[c, c]
        if c in present:
            assert cm.iou()[c] == pytest.approx(expected[c, c] / union)
        else:
            assert math.isnan(cm.iou()[c])


def test_score_masks_streams_pairs_with_ignore_indices_and_validity() -> None:
    rng = np.random.default_rng(1)
    truths = [rng.integers(0, 5, (6, 5)).astype(np.uint8) for _ in range(3)]
    preds = [rng.integers(0, 3, (6, 5)).astype(np.uint8) for _ in range(3)]
    valids = [rng.random((6, 5)) > 0.3 for _ in range(3)]
    # classes 0..2; 3 and 4 are void labels; pixels outside `valid` are not scored
    result = score_masks(
        zip(truths, preds, valids, strict=True), 3, ignore_index=(3, 4), class_names=["a", "b", "c"]
    )
    keep = [(t < 3) & v for t, v in zip(truths, valids, strict=True)]
    t_all = np.concatenate([t[k] for t, k in zip(truths, keep, strict=True)])
    p_all = np.concatenate([p[k] for p, k in zip(preds, keep, strict=True)])
    assert result["images"] == 3 and result["pixels"] == t_all.size
    assert result["pixel_accuracy"] == pytest.approx(float((t_all == p_all).mean()), abs=1e-6)
    for c, name in enumerate("abc"):
        inter = int(((t_all == c) & (p_all == c)).sum())
        union = int(((t_all == c) | (p_all == c)).sum())
        assert result["iou"][name] == pytest.approx(inter / union, abs=1e-6)
    # an ignore index inside the class range is skipped too
    cm = ConfusionMatrix(3, ignore_index=[1, IGNORE_INDEX]).update(
        np.array([0, 1, 2, 255]), np.array([0, 0, 0, 0])
    )
    np.testing.assert_array_equal(cm.matrix.sum(axis=1), [1, 0, 1])
    plain = score_masks([(np.array([0, 1]), np.array([0, 0]))], 2)
    assert plain["iou"] == {"0": 0.5, "1": 0.0} and plain["images"] == 1


def test_validity_mask_of_another_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="valid has 3 values"):
        ConfusionMatrix(2).update(np.zeros(4), np.zeros(4), np.ones(3, bool))
