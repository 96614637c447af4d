"""What a data set's masks mean, for training: encoding detection, class counts and names,
ignore indices and class weights (numpy only).

The runtime only decodes masks (segen_edge.masks.load_mask) with the encoding a run
recorded in its card; deciding that encoding, how many classes there are, their names, which
ids are void and how much each class weighs in the loss happens once, here, at training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.masks import classify_encoding, default_palette, read_mask_values
from segen_edge.metrics import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "TRIMAP_CLASSES",
    "VOC_CLASSES",
    "check_ignore_indices",
    "class_pixel_counts",
    "count_classes",
    "default_class_names",
    "default_palette",
    "detect_encoding",
    "median_frequency_weights",
    "parse_class_weights",
    "remap_ignored",
]

TRIMAP_CLASSES = ("pet", "background", "border")
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_SAMPLE = 24  # masks read by detect_encoding


def detect_encoding(mask_paths: Sequence[str | Path]) -> str:
    """Guess the encoding of a data set's masks from an evenly spread sample of them."""
    paths = list(mask_paths)
    if not paths:
        raise BadInputError("no mask files to detect the encoding from; check --data")
    step = max(1, len(paths) // _SAMPLE)
    values: set[int] = set()
    modes: set[str] = set()
    for path in paths[::step][:_SAMPLE]:
        raw, mode = read_mask_values(path)
        modes.add(mode)
        values.update(int(v) for v in np.unique(raw))
    return classify_encoding(values, modes)


def remap_ignored(mask: np.ndarray, ignore_index: Sequence[int]) -> np.ndarray:
    """`mask` with every id in `ignore_index` set to IGNORE_INDEX (a new array only when
    something changes), so loss and metrics downstream skip one value only."""
    extra = [int(v) for v in ignore_index if int(v) != IGNORE_INDEX]
    if not extra:
        return mask
    hit = np.isin(mask, extra)
    if not hit.any():
        return mask
    out = mask.copy()
    out[hit] = IGNORE_INDEX
    return out


def count_classes(
    masks: Iterable[np.ndarray], encoding: str, ignore_index: Sequence[int] = (IGNORE_INDEX,)
) -> int:
    """Number of classes a data set's decoded masks need (highest id that is not ignored,
    plus one; at least 2)."""
    if encoding == "trimap":
        return 3
    if encoding == "binary":
        return 2
    ignored = np.asarray(sorted({IGNORE_INDEX, *(int(v) for v in ignore_index)}))
    highest = 0
    for mask in masks:
        ids = np.unique(mask)
        ids = ids[~np.isin(ids, ignored)]
        if ids.size:
            highest = max(highest, int(ids.max()))
    return max(2, highest + 1)


def check_ignore_indices(ignore_index: Sequence[int], num_classes: int, class_names: Sequence[str]) -> None:
    """Refuse an ignore index that is also a class id (0..num_classes-1) or not a mask value."""
    for value in ignore_index:
        if not 0 <= value <= 255:
            raise BadInputError(f"--ignore-index {value}: expected a mask value in 0..255")
        if value < num_classes:
            name = class_names[value] if value < len(class_names) else f"class_{value}"
            raise BadInputError(
                f"--ignore-index {value} is also class id {value} ('{name}') of the "
                f"{num_classes} classes; an ignored id must not be a class: drop its name from "
                "--class-names, or give the void label's own id"
            )


def default_class_names(encoding: str, num_classes: int) -> tuple[str, ...]:
    """Class names for a data set whose masks say nothing about them."""
    if encoding == "trimap" and num_classes == 3:
        return TRIMAP_CLASSES
    if encoding == "binary" and num_classes == 2:
        return ("background", "foreground")
    if encoding == "palette" and num_classes <= len(VOC_CLASSES) and num_classes > 2:
        return VOC_CLASSES[:num_classes]
    return tuple(f"class_{i}" for i in range(num_classes))


# -- class weights -----------------------------------------------------------------------


def class_pixel_counts(masks: Iterable[np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the masks that hold the class): the two counts of
    median-frequency balancing. Ids outside 0..num_classes-1 (ignored pixels) are not counted
    and do not count towards a mask's size."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    present_in = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        ids = np.asarray(mask).reshape(-1)
        counts = np.bincount(ids[ids < num_classes], minlength=num_classes)[:num_classes]
        pixels += counts
        present_in[counts > 0] += int(counts.sum())
    return pixels, present_in


def median_frequency_weights(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Median-frequency balancing (Eigen and Fergus 2015, as SegNet uses it): a class's
    frequency is its pixels over the pixels of the masks it appears in; its weight is the
    median frequency over its own. Ignored pixels are left out; a class found in no mask
    gets weight 1. float32 (num_classes,)."""
    pixels, present_in = class_pixel_counts(masks, num_classes)
    seen = pixels > 0
    weights = np.ones(num_classes, dtype=np.float64)
    if seen.any():
        freq = pixels[seen] / present_in[seen]
        weights[seen] = np.median(freq) / freq
    return weights.astype(np.float32)


def parse_class_weights(
    text: str, num_classes: int, masks: Iterable[np.ndarray], class_names: Sequence[str]
) -> np.ndarray | None:
    """--class-weights: 'none' -> None, 'auto' -> median-frequency weights of `masks`, or
    'w1,w2,...' with one positive weight per class."""
    choice = text.strip().lower()
    if choice == "none":
        return None
    if choice == "auto":
        return median_frequency_weights(masks, num_classes)
    try:
        values = [float(v) for v in choice.split(",")]
    except ValueError:
        raise BadInputError(
            f"--class-weights {text!r}: expected auto, none or one number per class "
            f"separated by commas (e.g. {','.join(['1'] * num_classes)})"
        ) from None
    if len(values) != num_classes:
        raise BadInputError(
            f"--class-weights gives {len(values)} weights but the masks hold {num_classes} "
            f"classes ({', '.join(class_names)}); give one weight per class, or auto"
        )
    if not all(np.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise BadInputError(f"--class-weights {text!r}: expected finite weights >= 0, not all 0")
    return np.asarray(values, dtype=np.float32)
