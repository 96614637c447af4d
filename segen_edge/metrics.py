"""Segmentation metrics from a streaming confusion matrix (numpy only).

Rows are the true class, columns the predicted class. Pixels whose truth is an ignore
index, or outside 0..num_classes-1, or outside an optional validity mask, are skipped. A
class absent from both truth and prediction has NaN IoU and Dice and is left out of the
means. `score_masks` is the one scoring loop: training, export and `evaluate` call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = 255  # the one "not a class" label: loss, metrics and masks all skip it

IgnoreIndex = int | Sequence[int] | None


class ConfusionMatrix:
    """Accumulate (true, predicted) pixel counts over any number of batches."""

    def __init__(self, num_classes: int, ignore_index: IgnoreIndex = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes is {num_classes}; expected at least 1")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        if ignore_index is None:
            self.ignored: tuple[int, ...] = ()
        elif isinstance(ignore_index, int):
            self.ignored = (int(ignore_index),)
        else:
            self.ignored = tuple(int(v) for v in ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # Pixels predicted as an id outside the classes: wrong, so false negatives of the truth.
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0
        self.missed[:] = 0

    def update(
        self, y_true: np.ndarray, y_pred: np.ndarray, valid: np.ndarray | None = None
    ) -> ConfusionMatrix:
        """Add a batch of class ids; shapes must hold the same number of pixels. `valid`
        (bool or 0/nonzero, same size) keeps only the pixels where it is true."""
        true = np.asarray(y_true).reshape(-1).astype(np.int64)
        pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
        if true.size != pred.size:
            raise ValueError(
                f"y_true has {true.size} values but y_pred has {pred.size}; expected the same "
                f"shapes (got {np.shape(y_true)} and {np.shape(y_pred)})"
            )
        keep = (true >= 0) & (true < self.num_classes)
        for ignored in self.ignored:
            keep &= true != ignored
        if valid is not None:
            inside = np.asarray(valid).reshape(-1)
            if inside.size != true.size:
                raise ValueError(
                    f"valid has {inside.size} values but y_true has {true.size}; expected the "
                    f"same shapes (got {np.shape(valid)} and {np.shape(y_true)})"
                )
            keep &= inside.astype(bool)
        true, pred = true[keep], pred[keep]
        bad = (pred < 0) | (pred >= self.num_classes)
        if bad.any():
            self.missed += np.bincount(true[bad], minlength=self.num_classes)
            true, pred = true[~bad], pred[~bad]
        n = self.num_classes
        self.matrix += np.bincount(true * n + pred, minlength=n * n).reshape(n, n)
        return self

    # -- per class ----------------------------------------------------------------------

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        true_total = m.sum(axis=1) + self.missed
        pred_total = m.sum(axis=0)
        return tp, true_total - tp, pred_total - tp  # tp, fn, fp

    def iou(self) -> np.ndarray:
        tp, fn, fp = self._counts()
        denom = tp + fn + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def dice(self) -> np.ndarray:
        tp, fn, fp = self._counts()
        denom = 2 * tp + fn + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / denom, np.nan)

    # -- summaries ----------------------------------------------------------------------

    def miou(self) -> float:
        return _nanmean(self.iou())

    def mean_dice(self) -> float:
        return _nanmean(self.dice())

    def pixel_accuracy(self) -> float:
        tp, fn, _ = self._counts()
        total = float((tp + fn).sum())
        return float(tp.sum() / total) if total else float("nan")

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary; per-class values keyed by class name (None for NaN)."""
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return {
            "miou": _clean(self.miou()),
            "mean_dice": _clean(self.mean_dice()),
            "pixel_accuracy": _clean(self.pixel_accuracy()),
            "iou": {n: _clean(v) for n, v in zip(names, self.iou(), strict=True)},
            "dice": {n: _clean(v) for n, v in zip(names, self.dice(), strict=True)},
            "pixels": int(self.matrix.sum()),
        }


def score_masks(
    pairs: Iterable[tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: IgnoreIndex = IGNORE_INDEX,
) -> dict[str, Any]:
    """Score predicted class ids against true ones, streaming over `pairs`.

    Each item is ``(truth, prediction)`` or ``(truth, prediction, valid)``: class-id arrays
    with the same number of pixels (any shapes), and optionally a validity mask (pixels where
    it is false are skipped, e.g. outside a retina's field of view). Truth pixels equal to an
    ignore index (one int, several, or None) or outside 0..num_classes-1 are skipped.

    Returns ConfusionMatrix.as_dict: ``miou``, ``mean_dice``, ``pixel_accuracy``, ``iou`` and
    ``dice`` per class name (None where a class is absent from truth and prediction),
    ``pixels`` scored, and ``images``: the number of pairs.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index)
    images = 0
    for item in pairs:
        truth, pred = item[0], item[1]
        valid = item[2] if len(item) > 2 else None  # type: ignore[misc]
        matrix.update(truth, pred, valid)
        images += 1
    result = matrix.as_dict(class_names)
    result["images"] = images
    return result


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def _clean(value: float) -> float | None:
    value = float(value)
    return None if value != value else round(value, 6)
