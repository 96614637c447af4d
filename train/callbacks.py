"""Keras callbacks and schedules for training: the segmenter's validator (scored with the
runtime's segen_edge.metrics.score_masks), precise BatchNorm and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segen_edge.images import resize_u8
from segen_edge.metadata import ModelInfo
from segen_edge.metrics import score_masks
from segen_edge.probabilities import make_predictor
from segen_edge.tiling import segment_image

from .rundir import STATE, save_model, write_json

Pairs = Iterable[tuple[np.ndarray, np.ndarray]]
Predictions = Callable[[keras.Model], Pairs]
STUCK_EPOCHS = 3  # a present class at IoU 0 this many epochs in a row gets a warning


def resized_predictions(
    images: np.ndarray, full_masks: Sequence[np.ndarray], batch_size: int = 8
) -> Predictions:
    """(truth, prediction) pairs for images already resized and scaled to the model's input:
    the argmax resized back to each mask's own size (nearest), as the runtime's resize mode
    does."""

    def pairs(model: keras.Model) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size], training=False)
            classes = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1).astype(np.uint8)
            for offset, class_map in enumerate(classes):
                truth = full_masks[start + offset]
                yield truth, resize_u8(class_map, truth.shape, nearest=True)

    return pairs


def tiled_predictions(
    images_u8: Sequence[np.ndarray],
    full_masks: Sequence[np.ndarray],
    info: ModelInfo,
    batch_size: int = 8,
) -> Predictions:
    """(truth, prediction) pairs for whole images at native size, run through the runtime's
    own tiling (segen_edge.tiling.segment_image) as `info` says (mode, tile, overlap), with
    the Keras model as the predictor: validation sees what `segen-edge segment` will do."""

    def pairs(model: keras.Model) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        def run(batch: np.ndarray) -> np.ndarray:
            return keras.ops.convert_to_numpy(model(batch, training=False))

        predict = make_predictor(run, info)
        for image_u8, truth in zip(images_u8, full_masks, strict=True):
            ids, _ = segment_image(
                image_u8,
                predict,
                mode=info.mode,
                model_size=info.image_size,
                tile=info.tile,
                overlap=info.overlap,
                stride=info.stride,
                batch_size=batch_size,
            )
            yield truth, ids

    return pairs


def evaluate_segmenter(
    model: keras.Model, predictions: Predictions, class_names: Sequence[str]
) -> dict[str, Any]:
    """score_masks over `predictions(model)`: mIoU, per-class IoU and Dice, pixel accuracy."""
    return score_masks(predictions(model), len(class_names), class_names=list(class_names))


def precise_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> None:
    """Replace every BatchNorm's moving mean/variance by the average of its batch statistics
    over `images` ("precise BN"). With few steps per epoch and a high learning rate the
    exponential moving averages lag the weights, and inference suffers; training does not
    read these statistics, so this changes nothing but inference."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
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
    validation mIoU / Dice / pixel accuracy and per-class IoU into the logs (so CSVLogger
    records them) and on stdout, a warning for classes stuck at IoU 0, the best model by val
    mIoU to model.keras, the last model and the run state to last.keras / state.json (for
    --resume), and early stopping."""

    def __init__(
        self,
        predictions: Predictions,
        class_names: Sequence[str],
        run_dir: str | Path,
        patience: int = 10,
        batch_size: int = 8,
        state: dict[str, Any] | None = None,
        calibration_images: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.predictions = predictions
        self.calibration_images = calibration_images
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
        self.zero_streak = {name: 0 for name in self.class_names}
        known = {"epochs_run", "best", "best_epoch", "best_metrics", "wait"}
        self.extra_state = {k: v for k, v in state.items() if k not in known}  # e.g. held_out

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        if self.calibration_images is not None:
            precise_batchnorm(self.model, self.calibration_images, self.batch_size)
        summary = evaluate_segmenter(self.model, self.predictions, self.class_names)
        miou = _number(summary["miou"])
        logs["val_miou"] = miou
        logs["val_mean_dice"] = _number(summary["mean_dice"])
        logs["val_pixel_accuracy"] = _number(summary["pixel_accuracy"])
        for name in self.class_names:
            logs[f"val_iou_{name}"] = _number(summary["iou"][name])
        self.epochs_run = epoch + 1
        improved = miou > self.best
        if improved:
            self.best, self.best_epoch, self.best_metrics = miou, epoch + 1, summary
            self.wait = 0
            save_model(self.model, self.run_dir / "model.keras")
        else:
            self.wait += 1
        save_model(self.model, self.run_dir / "last.keras")
        write_json(
            self.run_dir / STATE,
            {
                "epochs_run": self.epochs_run,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "wait": self.wait,
                **self.extra_state,
            },
        )
        mark = " (best)" if improved else ""
        print(
            f"epoch {epoch + 1}: val mIoU {miou:.4f}, mean Dice {logs['val_mean_dice']:.4f}, "
            f"pixel accuracy {logs['val_pixel_accuracy']:.4f}{mark}",
            flush=True,
        )
        print(
            "  IoU " + ", ".join(f"{name} {_show(summary['iou'][name])}" for name in self.class_names),
            flush=True,
        )
        for name in self.stuck_classes(summary["iou"]):
            print(
                f"warning: class '{name}' has had IoU 0 on the validation images for "
                f"{self.zero_streak[name]} epochs; the model never gets it right: try "
                "--class-weights auto, --loss ce+dice or focal, or more images of it",
                flush=True,
            )
        if self.patience and self.wait >= self.patience:
            print(f"early stop: no val mIoU gain for {self.patience} epochs", flush=True)
            self.model.stop_training = True

    def stuck_classes(self, iou: dict[str, float | None]) -> list[str]:
        """Update the per-class streaks of IoU 0 (None: absent, not counted) and name the
        classes whose streak has reached STUCK_EPOCHS."""
        stuck = []
        for name in self.class_names:
            value = iou.get(name)
            self.zero_streak[name] = self.zero_streak[name] + 1 if value == 0 else 0
            if self.zero_streak[name] >= STUCK_EPOCHS:
                stuck.append(name)
        return stuck


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


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
