"""Score a segmenter on labelled images: mIoU, per-class IoU, Dice, pixel accuracy.

Predictions go through exactly the path `segen-edge segment` uses (preprocess, run, argmax,
nearest resize back to each image's size), so the figures are what users get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BadInputError
from .images import load_image, resize_u8
from .masks import Pair, find_pairs, load_mask
from .metrics import ConfusionMatrix
from .pipeline import batched
from .segment import Segmenter


def held_out_pairs(data_dir: str, stems: Sequence[str] | None) -> list[Pair]:
    """The labelled pairs of `data_dir`, restricted to `stems` when given."""
    pairs = find_pairs(data_dir)
    if stems is None:
        return pairs
    wanted = set(stems)
    chosen = [p for p in pairs if p.stem in wanted]
    missing = wanted - {p.stem for p in chosen}
    if missing:
        raise BadInputError(
            f"{data_dir}: {len(missing)} held-out stems have no image/mask pair "
            f"(e.g. {sorted(missing)[0]}); is this the data set the model was trained on?"
        )
    return chosen


def evaluate(
    segmenter: Segmenter, pairs: Sequence[Pair], encoding: str = "auto", batch_size: int = 8
) -> dict[str, Any]:
    """Metrics of `segmenter` over `pairs`, plus how many images were scored."""
    names = segmenter.info.class_names
    matrix = ConfusionMatrix(len(names))
    for group in batched(pairs, batch_size):
        images = [load_image(p.image, segmenter.info.channels).image_u8 for p in group]
        small = segmenter.predict_batch(np.stack([segmenter.prepare(im) for im in images]))
        for pair, mask in zip(group, small, strict=True):
            if pair.mask is None:
                raise BadInputError(f"{pair.image}: no mask found for this image")
            truth = load_mask(pair.mask, encoding)
            matrix.update(truth, resize_u8(mask, truth.shape[:2], nearest=True))
    result = matrix.as_dict(list(names))
    result["images"] = len(pairs)
    return result
