"""Keras callbacks that score a segmenter on held-out images with the runtime's metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segen_edge.images import resize_u8
from segen_edge.metrics import ConfusionMatrix

from .rundir import STATE, save_model, write_json


def evaluate_segmenter(
    model: keras.Model,
    images: np.ndarray,
    full_masks: Sequence[np.ndarray],
    num_classes: int,
    batch_size: int = 8,
) -> ConfusionMatrix:
    """Predict scaled images, take the argmax, resize each class map back to its mask's own
    size (nearest, as the runtime does) and accumulate a confusion matrix."""
    matrix = ConfusionMatrix(num_classes)
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size], training=False)
        classes = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1).astype(np.uint8)
        for offset, class_map in enumerate(classes):
            truth = full_masks[start + offset]
            matrix.update(truth, resize_u8(class_map, truth.shape, nearest=True))
    return matrix


def precise_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> None:
    """Replace every BatchNorm's moving mean/variance by the average of its batch statistics
    over `images` ("precise BN"). With few steps per epoch and a high learning rate the
    exponential moving averages lag the weights, and inference suffers; training does not
    read these statistics, so this changes nothing but inference."""
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms or not len(images):
        return
    saved = [layer.momentum for layer in norms]
    try:
        for k, start in enumerate(range(0, len(images), batch_size), start=1):
            for layer in norms:
                layer.momentum = (k - 1) / k  # running average of the batches' statistics
            model(images[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum


class SegmentationValidator(keras.callbacks.Callback):
    """After each epoch: BatchNorm statistics recomputed on (unaugmented) training images,
    validation mIoU / Dice / pixel accuracy into the logs (so CSVLogger records them), the
    best model by val mIoU to model.keras, the last model and the run state to last.keras /
    state.json (for --resume), and early stopping."""

    def __init__(
        self,
        images: np.ndarray,
        full_masks: Sequence[np.ndarray],
        class_names: Sequence[str],
        run_dir: str | Path,
        patience: int = 10,
        batch_size: int = 8,
        state: dict[str, Any] | None = None,
        calibration_images: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.images = images
        self.calibration_images = calibration_images
        self.full_masks = full_masks
        self.class_names = list(class_names)
        self.run_dir = Path(run_dir)
        self.patience = patience
        self.batch_size = batch_size
        state = state or {}
        self.best = float(state.get("best", -math.inf) or -math.inf)
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_metrics: dict[str, Any] = dict(state.get("best_metrics", {}))
        self.wait = int(state.get("wait", 0))
        self.epochs_run = int(state.get("epochs_run", 0))
        known = {"epochs_run", "best", "best_epoch", "best_metrics", "wait"}
        self.extra_state = {k: v for k, v in state.items() if k not in known}  # e.g. held_out

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        if self.calibration_images is not None:
            precise_batchnorm(self.model, self.calibration_images, self.batch_size)
        matrix = evaluate_segmenter(
            self.model, self.images, self.full_masks, len(self.class_names), self.batch_size
        )
        summary = matrix.as_dict(self.class_names)
        miou = matrix.miou()
        logs["val_miou"] = miou
        logs["val_mean_dice"] = matrix.mean_dice()
        logs["val_pixel_accuracy"] = matrix.pixel_accuracy()
        for name, value in zip(self.class_names, matrix.iou(), strict=True):
            logs[f"val_iou_{name}"] = float(value)
        self.epochs_run = epoch + 1
        improved = miou > self.best
        if improved:
            self.best, self.best_epoch, self.best_metrics = miou, epoch + 1, summary
            self.wait = 0
            save_model(self.model, self.run_dir / "model.keras")
        else:
            self.wait += 1
        save_model(self.model, self.run_dir / "last.keras")
        write_json(self.run_dir / STATE, {
            "epochs_run": self.epochs_run, "best": self.best, "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics, "wait": self.wait, **self.extra_state,
        })
        mark = " (best)" if improved else ""
        print(f"epoch {epoch + 1}: val mIoU {miou:.4f}, mean Dice {matrix.mean_dice():.4f}, "
              f"pixel accuracy {matrix.pixel_accuracy():.4f}{mark}", flush=True)
        if self.patience and self.wait >= self.patience:
            print(f"early stop: no val mIoU gain for {self.patience} epochs", flush=True)
            self.model.stop_training = True


def cosine_schedule(base_lr: float, epochs: int, floor: float = 0.05) -> Any:
    """Per-epoch cosine decay from base_lr to floor * base_lr (deterministic, so a resumed
    run continues on the same curve)."""

    def schedule(epoch: int, lr: float = 0.0) -> float:
        progress = min(1.0, epoch / max(1, epochs - 1))
        return float(base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))))

    return schedule


def linear_decay(base_lr: float, epochs: int, decay_epochs: int) -> Any:
    """Per-epoch rate: base_lr until the last `decay_epochs` epochs, then a straight line
    down to base_lr / (decay_epochs + 1) in the last one (deterministic, so a resumed run
    continues on the same line; 0 keeps base_lr throughout)."""

    def schedule(epoch: int, lr: float = 0.0) -> float:
        start = epochs - decay_epochs
        if decay_epochs <= 0 or epoch < start:
            return float(base_lr)
        return float(base_lr * (epochs - epoch) / (decay_epochs + 1))

    return schedule
