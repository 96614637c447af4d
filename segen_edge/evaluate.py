"""Score a segmenter on labelled images at their own size: mIoU, per-class IoU, Dice, accuracy.

Predictions go through exactly the path `segen-edge segment` and `Segmenter.segment()` take
(the model's mode: resize with probability upsampling, tile or native), at each image's
original resolution, so the figures are what users get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .images import load_image
from .masks import Pair, find_pairs, load_mask
from .metrics import IGNORE_INDEX, score_masks
from .segment import RunSettings, Segmenter

DATA_ENV = "SEGEN_EDGE_DATA"


def held_out_pairs(data_dir: str | Path, stems: Sequence[str] | None) -> list[Pair]:
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


def find_data(card_data: str | None, model: str) -> Path:
    """The card's data folder: as recorded when it exists, else by its name under
    $SEGEN_EDGE_DATA or ../shared/data beside the checkout; else say what to pass."""
    if not card_data:
        raise BadInputError(f"{model}: its card names no data folder; pass --data DIR")
    recorded = Path(card_data)
    if recorded.is_dir():
        return recorded
    name = recorded.name
    roots = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    checkout = Path(__file__).resolve().parent.parent
    roots += [checkout.parent / "shared" / "data", Path.cwd() / "data"]
    for root in roots:
        if (root / name).is_dir():
            return root / name
    raise BadInputError(
        f"{model}: its data set {name!r} is not at {card_data} nor under ${DATA_ENV}; "
        f"pass --data DIR (the folder holding {name}'s images and masks) or set {DATA_ENV}"
    )


def evaluate(
    segmenter: Segmenter,
    pairs: Sequence[Pair],
    encoding: str = "auto",
    *,
    settings: RunSettings | None = None,
    ignore_index: int | Sequence[int] | None = IGNORE_INDEX,
    valid_masks: str | Path | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Metrics of `segmenter` over `pairs` at each image's own size, plus how many images
    were scored. `valid_masks`: a folder of masks (same stems) whose zero pixels are skipped."""
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    names = segmenter.info.class_names

    def scored() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        for start in range(0, len(pairs), batch_size):
            group = pairs[start : start + batch_size]
            images = [load_image(p.image, segmenter.info.channels).image_u8 for p in group]
            for pair, result in zip(group, segmenter.segment_arrays(images, run), strict=True):
                if pair.mask is None:
                    raise BadInputError(f"{pair.image}: no mask found for this image")
                truth = load_mask(pair.mask, encoding)
                if truth.shape[:2] != result.size:
                    raise BadInputError(
                        f"{pair.mask}: mask is {truth.shape[1]}x{truth.shape[0]} but its image is "
                        f"{result.size[1]}x{result.size[0]}; masks must have their image's size"
                    )
                yield truth, result.ids, _valid(valid_masks, pair, truth.shape[:2])

    result = score_masks(scored(), len(names), class_names=list(names), ignore_index=ignore_index)
    result["mode"] = run.mode
    return result


def _valid(folder: str | Path | None, pair: Pair, size: tuple[int, int]) -> np.ndarray | None:
    if folder is None:
        return None
    candidates = sorted(Path(folder).glob(pair.stem + ".*"))
    if not candidates:
        raise BadInputError(f"{folder}: no validity mask for {pair.stem}; expected {pair.stem}.png there")
    valid = load_image(candidates[0], 1).image_u8[:, :, 0]
    if valid.shape != size:
        raise BadInputError(
            f"{candidates[0]}: validity mask is {valid.shape[1]}x{valid.shape[0]}; "
            f"expected {size[1]}x{size[0]}"
        )
    return valid > 0
