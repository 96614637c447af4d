"""Calibration data for int8: real images decoded and resized exactly as the runtime does
(segen_edge.images.load_image + resize_u8, then ModelInfo.preprocessing), or seeded latent
vectors for a generator."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from segen_edge.errors import BadInputError
from segen_edge.files import find_images
from segen_edge.images import load_image, resize_u8
from segen_edge.masks import find_pairs
from segen_edge.metadata import ModelInfo

from .errors import CalibrationError
from .measure import feed

DEFAULT_COUNT = 100
METHODS = ("minmax", "entropy", "percentile")


def calibration_paths(
    calib_dir: str | Path, count: int, seed: int = 0, exclude: Collection[Path] = ()
) -> list[Path]:
    """Up to `count` image files under `calib_dir`, a seeded sample in sorted order.

    A data set folder (images/ + masks, as training reads it) gives its images, never its
    masks; any other folder gives the images in it (recursively). The files in `exclude` (the
    held-out split) are left out, so calibration never sees an evaluation image.
    """
    root = Path(calib_dir)
    if not root.is_dir():
        raise CalibrationError(
            f"{root}: no such calibration folder; give --calib a folder of training images"
        )
    try:
        found = [pair.image for pair in find_pairs(root, require_masks=False)]
    except BadInputError:
        found = []
    if not found:
        try:
            found = [src.path for src in find_images([root], recursive=True)]
        except BadInputError as exc:
            raise CalibrationError(f"calibration folder {exc}") from None
    skip = {p.resolve() for p in exclude}
    paths = [p for p in found if p.resolve() not in skip]
    if not paths:
        held = f" ({len(found)} found, all held out for evaluation)" if found else ""
        raise CalibrationError(
            f"{root}: no images to calibrate on{held}; expected PNG, JPEG, BMP, WebP or TIFF "
            "files; give --calib a folder of training images"
        )
    if count < 1:
        raise CalibrationError(f"--calib-count is {count}; expected at least 1")
    if count < len(paths):
        picks = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
        paths = [paths[i] for i in sorted(picks)]
    return paths


def load_calibration(paths: list[Path], info: ModelInfo) -> np.ndarray:
    """Decode images and resize them to the model's size: an (N, H, W, C) uint8 batch
    (the runtime's preprocessing turns it into model input)."""
    samples = []
    for path in paths:
        try:
            image_u8 = load_image(path, info.channels).image_u8
        except BadInputError as exc:
            raise CalibrationError(
                f"calibration image {exc}; remove the file or give another --calib folder"
            ) from None
        samples.append(resize_u8(image_u8, info.image_size))
    return np.stack(samples)


def latent_samples(info: ModelInfo, count: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal latents, drawn as segen_edge.generate draws them."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, info.latent_size), dtype=np.float32)


class ArrayReader(CalibrationDataReader):
    """Feeds uint8 NHWC samples (or latents), one batch at a time, as the model's input."""

    def __init__(self, input_name: str, samples: np.ndarray, info: ModelInfo, batch_size: int = 1) -> None:
        self.input_name = input_name
        self.samples = samples
        self.info = info
        self.batch_size = batch_size
        self._next = 0
        self._end = len(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        stop = min(self._next + self.batch_size, self._end)
        batch = self.samples[self._next : stop]
        self._next = stop
        return {self.input_name: feed(batch, self.info)}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only samples[start_index:end_index] (the quantizer's strided calibration)."""
        self._next, self._end = start_index, min(end_index, len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)
