"""Resize and native modes of running a segmenter over an image of any size.

  resize  the image resized to the model's size (or letterboxed, keep_aspect=True, the
          padding cropped off again); the (K, h, w) probabilities are upsampled bilinearly
          with half-pixel centres (as OpenCV's INTER_LINEAR and PIL's BILINEAR when
          enlarging) to the image's size and argmaxed, in bands of rows, so no full
          K x H x W float array ever exists.
  native  the whole image mirror-padded to a multiple of `stride`, one run, cropped.

Tile mode and the entry point (segment_image) are in tiling.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from PIL import Image

from .errors import BadInputError
from .images import resize_u8
from .probabilities import (
    Predict,
    _as_hwc,
    _band_rows,
    _check_size,
    _checked,
    _emit,
    _outputs,
    linear_taps,
    reflect_index,
)

LETTERBOX_FILL = 0  # the grey level of letterbox bars (training must pad the same way)
# Above this many pixels resize mode shrinks an image in bands before PIL sees it: PIL would
# copy the whole image (4 bytes a pixel for RGB). Below, resize_u8 runs as in training.
DIRECT_RESIZE_MAX_PIXELS = 16_000_000
REDUCING_GAP = 3  # as PIL's resize(reducing_gap=3): box-reduce while >= 3x the target size


# -- resize mode -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Box:
    """Where the image lies inside the model-size input: (top, left, height, width)."""

    top: int
    left: int
    height: int
    width: int


def _box_reduce(image: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean of each fy x fx block (partial blocks at the edges: of the pixels they have),
    rounded, as uint8 (ceil(H / fy), ceil(W / fx), C); one row of blocks at a time."""
    height, width, channels = image.shape
    starts = np.arange(0, width, fx)
    cols = np.minimum(starts + fx, width) - starts  # pixels per block column
    out = np.empty((len(range(0, height, fy)), len(starts), channels), np.uint8)
    for i, r0 in enumerate(range(0, height, fy)):
        rows = image[r0 : r0 + fy]
        sums = np.add.reduceat(rows, starts, axis=1, dtype=np.uint32).sum(axis=0, dtype=np.uint32)
        count = (rows.shape[0] * cols)[:, None].astype(np.uint32)
        out[i] = (sums + count // 2) // count
    return out


def shrink_u8(image_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to `size` as (h, w, C): resize_u8 (PIL)
    for images up to DIRECT_RESIZE_MAX_PIXELS; for larger ones an exact box reduction in
    bands first, then PIL on the reduced image, as PIL's own resize(reducing_gap=3) does,
    so memory stays near the decoded image instead of adding a full PIL copy."""
    image = _as_hwc(image_u8)
    height, width, channels = image.shape
    fy, fx = height // size[0] // REDUCING_GAP, width // size[1] // REDUCING_GAP
    if height * width <= DIRECT_RESIZE_MAX_PIXELS or max(fy, fx) < 2:
        return resize_u8(image, size).reshape(*size, channels)
    fy, fx = max(fy, 1), max(fx, 1)
    reduced = _box_reduce(image, fy, fx)
    pil = Image.fromarray(reduced[:, :, 0] if channels == 1 else reduced)
    box = (0.0, 0.0, width / fx, height / fy)
    out = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))
    return out.reshape(*size, channels)


def letterbox(image_u8: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Box]:
    """Resize keeping the aspect ratio to fit `size` (height, width), centred on bars of
    LETTERBOX_FILL; returns the (h, w, C) input and where the image lies in it."""
    image = _as_hwc(image_u8)
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    inner_h = min(size[0], max(1, round(height * scale)))
    inner_w = min(size[1], max(1, round(width * scale)))
    box = Box((size[0] - inner_h) // 2, (size[1] - inner_w) // 2, inner_h, inner_w)
    canvas = np.full((*size, image.shape[2]), LETTERBOX_FILL, np.uint8)
    inner = shrink_u8(image, (inner_h, inner_w))
    canvas[box.top : box.top + inner_h, box.left : box.left + inner_w] = inner.reshape(inner_h, inner_w, -1)
    return canvas, box


def iter_upsampled(
    probs: np.ndarray, size: tuple[int, int], band_rows: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(row0, band) pairs covering `size` (H, W): bilinear upsampling of (K, h, w) float32
    probabilities, each band a float32 (K, b, W) array of output rows row0..row0+b."""
    k, h, w = probs.shape
    out_h, out_w = size
    rows = _band_rows(k, out_w, band_rows)
    if (h, w) == (out_h, out_w):  # an image at the model's size: the probabilities as they are
        for r0 in range(0, out_h, rows):
            yield r0, probs[:, r0 : r0 + rows]
        return
    y0, y1, wy = linear_taps(h, out_h)
    x0, x1, wx = linear_taps(w, out_w)
    wx0 = 1.0 - wx
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        lo, hi = int(y0[r0]), int(y1[r1 - 1]) + 1
        src = probs[:, lo:hi]
        horiz = src[:, :, x0]  # (K, hi - lo, W)
        horiz *= wx0
        right = src[:, :, x1]
        right *= wx
        horiz += right
        del right
        band = horiz[:, y0[r0:r1] - lo]
        band *= (1.0 - wy[r0:r1])[:, None]
        below = horiz[:, y1[r0:r1] - lo]
        below *= wy[r0:r1, None]
        band += below
        del horiz, below  # only the band stays alive while the caller uses it
        yield r0, band
        del band


def resize_input(
    image_u8: np.ndarray, model_size: tuple[int, int], keep_aspect: bool = False
) -> tuple[np.ndarray, Box]:
    """Resize mode's model input: the image squashed (or letterboxed) to model_size, and
    where the image lies in it."""
    image = _as_hwc(image_u8)
    model_size = _check_size(model_size, "model size")
    if keep_aspect:
        return letterbox(image, model_size)
    return shrink_u8(image, model_size), Box(0, 0, *model_size)


def upsample(
    probs: np.ndarray,
    box: Box,
    size: tuple[int, int],
    *,
    want_probs: bool = False,
    band_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize mode's result: (K, h, w) probabilities at model size, cropped to `box` and
    upsampled bilinearly to `size` (H, W) band by band -> ids and, optionally, uint8 probs."""
    probs = probs[:, box.top : box.top + box.height, box.left : box.left + box.width]
    size = (int(size[0]), int(size[1]))
    ids, probs_u8 = _outputs(probs.shape[0], size, want_probs)
    for row0, band in iter_upsampled(probs, size, band_rows):
        _emit(band, row0, ids, probs_u8)
        del band  # before the next band is made
    return ids, probs_u8


def segment_resized(
    image_u8: np.ndarray,
    predict: Predict,
    model_size: tuple[int, int],
    *,
    keep_aspect: bool = False,
    want_probs: bool = False,
    band_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize mode: one run at model_size, probabilities upsampled to the image's size."""
    image = _as_hwc(image_u8)
    model_input, box = resize_input(image, model_size, keep_aspect)
    probs = _checked(predict(model_input[None]), 1, model_input.shape[:2])[0]
    return upsample(probs, box, image.shape[:2], want_probs=want_probs, band_rows=band_rows)


# -- native mode -------------------------------------------------------------------------


def segment_native(
    image_u8: np.ndarray,
    predict: Predict,
    *,
    stride: int = 32,
    want_probs: bool = False,
    band_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Native mode: the image mirror-padded (bottom, right) to a multiple of `stride`, one
    run, cropped. Holds the model's full-size output: meant for images the model can take
    whole."""
    image = _as_hwc(image_u8)
    if not (isinstance(stride, int) and 1 <= stride <= 1024):
        raise BadInputError(f"stride {stride!r}: expected a whole number in 1..1024, e.g. 32")
    height, width = image.shape[:2]
    pad_h, pad_w = -height % stride, -width % stride
    if pad_h or pad_w:
        rows = reflect_index(np.arange(height + pad_h), height)
        cols = reflect_index(np.arange(width + pad_w), width)
        image = image[rows[:, None], cols[None, :]]
    size = (height + pad_h, width + pad_w)
    probs = _checked(predict(image[None]), 1, size)[0][:, :height, :width]
    ids, probs_u8 = _outputs(probs.shape[0], (height, width), want_probs)
    rows_per_band = _band_rows(probs.shape[0], width, band_rows)
    for r0 in range(0, height, rows_per_band):
        _emit(probs[:, r0 : r0 + rows_per_band], r0, ids, probs_u8)
    return ids, probs_u8
