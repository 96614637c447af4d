"""Segmentation losses over logits, with class weights and ignored pixels.

Targets are int class ids (N, H, W); pixels equal to IGNORE_INDEX (void labels, pixels
outside a validity mask; train.labels.remap_ignored folds every ignore index into it) add
nothing to any loss. Predictions are logits (N, H, W, C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from segen_edge.errors import BadInputError
from segen_edge.metrics import IGNORE_INDEX

LOSSES = ("ce", "dice", "ce+dice", "focal")
_EPS = 1e-6


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise BadInputError(f"--loss {name!r} is unknown; expected one of {', '.join(LOSSES)}")
    return name


@keras.saving.register_keras_serializable(package="segen_train")
class SegmentationLoss(keras.losses.Loss):
    """`kind`: ce (weighted mean of per-pixel cross-entropy, as PyTorch weighs it), focal
    (cross-entropy times (1 - p_true)**gamma, Lin et al. 2017), dice (1 - soft Dice averaged
    over the classes present in the batch's targets) or ce+dice (their sum).
    `class_weights` scale each pixel's cross-entropy / focal term by its true class."""

    def __init__(
        self,
        num_classes: int,
        kind: str = "ce",
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
        name: str = "segmentation_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        check_loss(kind)
        if class_weights is not None and len(class_weights) != num_classes:
            raise BadInputError(
                f"{len(class_weights)} class weights for {num_classes} classes; give one weight per class"
            )
        self.num_classes = int(num_classes)
        self.kind = kind
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.gamma = float(gamma)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (N, H, W, 1) targets
            labels = ops.squeeze(labels, axis=-1)
        logits = ops.cast(y_pred, "float32")
        valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        safe = ops.where(ops.not_equal(labels, IGNORE_INDEX), labels, 0)
        safe = ops.clip(safe, 0, self.num_classes - 1)
        total = ops.convert_to_tensor(0.0)
        if self.kind in ("ce", "ce+dice", "focal"):
            total = total + self._cross_entropy(logits, safe, valid)
        if self.kind in ("dice", "ce+dice"):
            total = total + self._dice(logits, safe, valid)
        return total

    def _cross_entropy(self, logits: Any, safe: Any, valid: Any) -> Any:
        log_probs = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(safe, -1), axis=-1)
        nll = -ops.squeeze(picked, axis=-1)
        if self.kind == "focal":
            p_true = ops.exp(-nll)
            nll = ops.power(1.0 - p_true, self.gamma) * nll
        weight = valid
        if self.class_weights is not None:
            table = ops.convert_to_tensor(self.class_weights, dtype="float32")
            weight = weight * ops.take(table, safe)
        return ops.sum(nll * weight) / ops.maximum(ops.sum(weight), _EPS)

    def _dice(self, logits: Any, safe: Any, valid: Any) -> Any:
        probs = ops.softmax(logits, axis=-1) * ops.expand_dims(valid, -1)
        onehot = ops.one_hot(safe, self.num_classes) * ops.expand_dims(valid, -1)
        axes = (0, 1, 2)
        inter = ops.sum(probs * onehot, axis=axes)
        target = ops.sum(onehot, axis=axes)
        denom = ops.sum(probs, axis=axes) + target
        dice = (2.0 * inter + _EPS) / (denom + _EPS)
        present = ops.cast(ops.greater(target, 0.0), "float32")
        return 1.0 - ops.sum(dice * present) / ops.maximum(ops.sum(present), 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, kind=self.kind, class_weights=self.class_weights, gamma=self.gamma
        )
        return config
