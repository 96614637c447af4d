"""Measure an exported model against fp32 on the run's held-out data, and time it.

Segmenters: mIoU against the ground-truth masks of the held-out stems recorded in the run's
card, scored as training and the runtime score it (argmax at model size, class map resized
back to the mask's own size by nearest neighbour), and the fraction of pixels whose class
agrees with fp32. Generators: mean absolute pixel difference from fp32's images for the same
seeded latents, and the training run's quality score.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.images import load_image, resize_u8
from segen_edge.masks import find_pairs, load_mask
from segen_edge.metadata import ModelInfo
from segen_edge.metrics import score_masks

from .errors import ExportError
from .run import Run

EVAL_SEED = 1  # generator evaluation latents (calibration uses seed 0)
EVAL_LATENTS = 256


@dataclass
class HeldOut:
    """Preprocessed held-out inputs and what to compare outputs with."""

    stems: list[str]
    inputs: np.ndarray  # (N, H, W, C) uint8 images at the model's size, or (N, latent) latents
    masks: list[np.ndarray]  # ground truth at each mask file's own size (segmenters)
    note: str = ""
    paths: list[Path] = field(default_factory=list)  # all held-out image files (segmenters)
    images: list[np.ndarray] = field(default_factory=list)  # the same images at their own size


def load_held_out(run: Run, limit: int | None = None) -> HeldOut:
    """The held-out images and masks named in the run's card (or seeded latents)."""
    info = run.info
    if info.task == "generate":
        scorer = quality_scorer(run)  # as many samples as the training's score used
        count = limit or (scorer.info.get("samples") if scorer else None) or EVAL_LATENTS
        rng = np.random.default_rng(EVAL_SEED)
        latents = rng.standard_normal((count, info.latent_size), dtype=np.float32)
        return HeldOut([], latents, [], f"{len(latents)} latents, seed {EVAL_SEED}")
    card = run.card
    data = card.get("data")
    if not data or not Path(data).is_dir():
        raise ExportError(
            f"{run.path}: the card's data folder {data!r} does not exist; evaluation needs the "
            "held-out images and masks the run was trained with"
        )
    stems = list(card.get("held_out") or [])
    pairs = {p.stem: p for p in find_pairs(data)}
    note = f"{len(stems)} held-out stems from the card"
    if not stems:
        stems = sorted(pairs)
        note = "no held_out in the card: ALL pairs in the data folder (includes training data)"
    chosen = [pairs[s] for s in stems if s in pairs]
    if not chosen:
        raise ExportError(
            f"{run.path}: none of the {len(stems)} held-out stems in the card is in {data}; "
            "give the data folder the run was trained with"
        )
    held_paths = [p.image for p in chosen]  # all of them, kept out of calibration
    if limit and limit < len(chosen):
        chosen = chosen[:limit]
        note = f"the first {limit} of {note}"
    encoding = card.get("mask_encoding", "auto")
    inputs, masks, images = [], [], []
    native = info.mode in ("tile", "native")  # scored at the images' own size, as they run
    try:
        for pair in chosen:
            if pair.mask is None:
                raise BadInputError(f"{pair.image}: no mask found for this held-out image")
            image = load_image(pair.image, info.channels).image_u8
            inputs.append(model_sized(image, info))
            masks.append(load_mask(pair.mask, encoding))
            if native:
                images.append(image)
    except BadInputError as exc:
        raise ExportError(f"held-out data: {exc}") from None
    return HeldOut([p.stem for p in chosen], np.stack(inputs), masks, note, held_paths, images)


def model_sized(image_u8: np.ndarray, info: ModelInfo) -> np.ndarray:
    """A decoded image resized to the model's input size, as the runtime resizes it."""
    return resize_u8(image_u8, info.image_size)


def segment_metrics(
    labels: Sequence[np.ndarray],
    held: HeldOut,
    info: ModelInfo,
    reference: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """mIoU etc. of class ids against ground truth: ids at model size are resized to their
    mask's size by nearest neighbour, ids at the image's own size (tile and native models)
    are scored as they are; `agreement` with `reference` ids when given."""
    pairs = (
        (mask, label if label.shape == mask.shape[:2] else resize_u8(label, mask.shape, nearest=True))
        for label, mask in zip(labels, held.masks, strict=True)
    )
    scores = score_masks(pairs, len(info.class_names), ignore_index=info.card.get("ignore_index", 255))
    out: dict[str, Any] = {
        "miou": round(float(scores["miou"] or 0.0), 5),
        "pixel_accuracy": round(float(scores["pixel_accuracy"] or 0.0), 5),
    }
    if reference is not None:
        same = sum(int(np.count_nonzero(a == b)) for a, b in zip(labels, reference, strict=True))
        out["agreement"] = round(same / max(1, sum(int(a.size) for a in labels)), 5)
    return out


def generator_metrics(
    images_u8: np.ndarray,
    reference_u8: np.ndarray | None,
    run: Run | None,
) -> dict[str, Any]:
    """Mean absolute difference from fp32's images (in 0..255 pixel levels), PSNR, and,
    given the run, the training's quality score."""
    out: dict[str, Any] = {}
    if reference_u8 is not None:
        diff = images_u8.astype(np.float64) - reference_u8.astype(np.float64)
        out["mean_abs_diff"] = round(float(np.abs(diff).mean()), 4)
        mse = float(np.mean(diff**2))
        out["psnr_db"] = round(10 * np.log10(255.0**2 / mse), 2) if mse > 0 else None
    quality = quality_score(run, images_u8) if run is not None else None
    if quality is not None:
        out["quality"] = quality
    return out


def quality_scorer(run: Run) -> Any | None:
    """The training run's GAN quality scorer (train.quality), or None when the run has none.

    Looked for where the card says the classifier is cached, then in the run folder."""
    try:
        from train.quality import CLASSIFIER_INFO, QualityScorer
    except ImportError:
        return None
    card = run.card
    candidates = [card.get(key) for key in ("classifier_cache", "quality_cache")]
    quality = card.get("quality")
    if isinstance(quality, dict):
        candidates.append(quality.get("classifier_cache"))
    candidates += [run.path, run.path / "quality", run.path / "classifier"]
    for folder in candidates:
        if folder and (Path(folder) / CLASSIFIER_INFO).is_file():
            return _load_scorer(str(folder), QualityScorer)
    return None


@functools.lru_cache(maxsize=4)
def _load_scorer(folder: str, scorer_class: Any) -> Any:
    return scorer_class.load(folder)


def quality_score(run: Run, images_u8: np.ndarray) -> dict[str, Any] | None:
    scorer = quality_scorer(run)
    if scorer is None:
        return None
    return dict(scorer.score(images_u8))
