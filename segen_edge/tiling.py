"""Run a segmenter over an image of any size: resize, tile (overlap-tile) or native.

Pure functions of a uint8 image and a *predictor*, a callable that turns a uint8 batch
(N, h, w, C) into float32 class probabilities (N, K, h, w). The caller builds it once per
model (see `make_predictor`: preprocessing, the session run, softmax), so this module knows
nothing of onnxruntime and is tested with synthetic predictors.

Modes (MODES):
  resize  the image resized to the model's size (or letterboxed, keep_aspect=True, the
          padding cropped off again); the (K, h, w) probabilities are upsampled bilinearly
          with half-pixel centres (as OpenCV's INTER_LINEAR and PIL's BILINEAR when
          enlarging) to the image's size and argmaxed, in bands of rows, so no full
          K x H x W float array ever exists.
  tile    windows of the tile size with `overlap`, mirror padding at the borders (the U-Net
          paper's overlap-tile), windows batched `batch_size` at a time, probabilities
          blended with a Gaussian, linear or constant window weight. Only one band of window
          rows is held (K x (tile_h + step) x padded width float32): rows are finished and
          emitted as soon as no later window touches them.
  native  the whole image mirror-padded to a multiple of `stride`, one run, cropped.

Border and small-image handling in tile mode: the image is mirror-padded by half the
overlap on every side, so image borders sit inside windows rather than on their edges, and
an image smaller than one tile is mirror-padded (centred) up to a whole tile. Mirroring
repeats (reflects again) where a pad is wider than the image, and a 1-pixel side is
repeated; so a tile larger than the image is never an error, only padding.

Outputs: class ids (H, W) uint8, uint16 when K > 256 (the first class wins a tie), and on
request probabilities as uint8 (K, H, W), round(p * 255).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import BadInputError, ModelError
from .images import resize_u8

if TYPE_CHECKING:
    from .metadata import ModelInfo

Predict = Callable[[np.ndarray], np.ndarray]
"""uint8 (N, h, w, C) windows or images -> float32 (N, K, h, w) class probabilities."""

MODES = ("resize", "tile", "native")
BLENDS = ("gaussian", "linear", "constant")
MAX_TILE_SIDE = 8192  # larger windows are a typo: a batch of them would not fit in memory
MAX_BATCH = 1024
LETTERBOX_FILL = 0  # the grey level of letterbox bars (training must pad the same way)
GAUSSIAN_SIGMA = 1.0 / 8.0  # of the tile side, as nnU-Net and MONAI
# Above this many pixels resize mode shrinks an image in bands before PIL sees it: PIL would
# copy the whole image (4 bytes a pixel for RGB). Below, resize_u8 runs as in training.
DIRECT_RESIZE_MAX_PIXELS = 16_000_000
REDUCING_GAP = 3  # as PIL's resize(reducing_gap=3): box-reduce while >= 3x the target size
_BAND_FLOATS = 1 << 20  # resize/native: about 4 MB of float32 per band of output rows


# -- model outputs -> probabilities ------------------------------------------------------


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along `axis` as float32; in place when `logits` is a
    writeable float32 array (the returned array is then `logits` itself)."""
    if logits.dtype == np.float32 and logits.flags.writeable:
        x = logits
    else:
        x = np.array(logits, dtype=np.float32)
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def to_probabilities(
    outputs: np.ndarray, *, output: str = "logits", layout: str = "NCHW", num_classes: int | None = None
) -> np.ndarray:
    """A segmenter's raw output -> float32 (N, K, h, w) probabilities.

    output: "logits" (softmax applied, in place where possible), "probs" (taken as they
    are) or "ids" (integer class ids (N, h, w), (N, 1, h, w) or (N, h, w, 1), one-hot
    encoded; needs num_classes). layout: "NCHW" or "NHWC", of the class axis."""
    if output == "ids":
        if num_classes is None or num_classes < 1:
            raise ModelError("a model that outputs class ids needs its class names (num_classes)")
        ids = outputs
        if ids.ndim == 4:
            ids = ids[:, 0] if layout == "NCHW" else ids[..., 0]
        if ids.ndim != 3:
            raise ModelError(f"the model returned class ids of shape {outputs.shape}; expected (N, h, w)")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
            raise ModelError(
                f"the model returned class id {int(ids.max())} but has {num_classes} classes; "
                "give one class name per class"
            )
        probs = np.zeros((ids.shape[0], num_classes, *ids.shape[1:]), np.float32)
        for k in range(num_classes):
            probs[:, k][ids == k] = 1.0
        return probs
    if output not in ("logits", "probs"):
        raise ModelError(f"model output kind {output!r}; expected logits, probs or ids")
    if outputs.ndim != 4:
        raise ModelError(f"the model returned shape {outputs.shape}; expected (N, K, h, w) or (N, h, w, K)")
    values = outputs if layout == "NCHW" else outputs.transpose(0, 3, 1, 2)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if num_classes is not None and values.shape[1] != num_classes:
        raise ModelError(
            f"the model outputs {values.shape[1]} classes but its metadata names {num_classes}; "
            "give one name per class (segen.class_names, or --class-names for a bare ONNX file)"
        )
    if output == "logits":
        if values is outputs and not values.flags.writeable:
            values = values.copy()
        softmax(values, axis=1)
    return values


def make_predictor(run: Callable[[np.ndarray], np.ndarray], info: ModelInfo) -> Predict:
    """A Predict from a function that runs the graph (float32 model input -> raw output)
    and the model's metadata (preprocessing, layout, output kind, class count)."""
    pre = info.preprocessing
    classes = len(info.class_names)

    def predict(batch_u8: np.ndarray) -> np.ndarray:
        raw = run(pre.to_model(batch_u8))
        return to_probabilities(raw, output=info.output, layout=info.layout, num_classes=classes)

    return predict


# -- shared helpers ----------------------------------------------------------------------


def ids_dtype(num_classes: int) -> np.dtype:
    """uint8 for up to 256 classes, else uint16."""
    if num_classes > 65536:
        raise ModelError(f"the model has {num_classes} classes; at most 65536 are supported")
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices (any integers) into 0..n-1 without repeating the edge (numpy's
    'reflect'), reflecting again as often as needed; a side of 1 repeats its pixel."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.mod(index, period)
    return np.where(i >= n, period - i, i)


def _as_hwc(image_u8: np.ndarray) -> np.ndarray:
    image = np.asarray(image_u8)
    if image.dtype != np.uint8:
        raise BadInputError(f"image of dtype {image.dtype}; expected uint8 pixels (decode with load_image)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise BadInputError(f"image of shape {image.shape}; expected (height, width[, channels]) of pixels")
    return image


def _checked(probs: np.ndarray, count: int, size: tuple[int, int]) -> np.ndarray:
    """The predictor's answer for `count` inputs of `size`, checked and as float32."""
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] != count or probs.shape[2:] != size or probs.shape[1] < 1:
        raise ModelError(
            f"the model returned shape {probs.shape} for {count} input(s) of {size[0]}x{size[1]}; "
            f"expected ({count}, classes, {size[0]}, {size[1]}) probabilities"
        )
    return probs if probs.dtype == np.float32 else probs.astype(np.float32)


def _argmax_into(probs: np.ndarray, out: np.ndarray) -> None:
    """argmax over axis 0 of (K, b, w) into `out` (b, w); the first class wins a tie.

    One pass per class over contiguous planes (np.argmax over a strided axis is slower)."""
    best = probs[0].copy()
    out[...] = 0
    for k in range(1, probs.shape[0]):
        plane = probs[k]
        out[plane > best] = k
        np.maximum(best, plane, out=best)


def class_ids(probs: np.ndarray) -> np.ndarray:
    """argmax over the class axis of (N, K, h, w) probabilities or logits -> (N, h, w)
    ids (uint8, uint16 beyond 256 classes); the first class wins a tie, as np.argmax."""
    out = np.empty((probs.shape[0], *probs.shape[2:]), ids_dtype(probs.shape[1]))
    for i in range(probs.shape[0]):
        _argmax_into(probs[i], out[i])
    return out


def _to_u8_into(plane: np.ndarray, out: np.ndarray, scale: np.ndarray | float = 1.0) -> None:
    """round(plane * scale * 255) clipped to 0..255, written into uint8 `out`."""
    tmp = np.multiply(plane, np.float32(255.0) * scale, dtype=np.float32)
    np.rint(tmp, out=tmp)
    np.clip(tmp, 0.0, 255.0, out=tmp)
    np.copyto(out, tmp, casting="unsafe")


def _emit(
    band: np.ndarray,
    row0: int,
    ids: np.ndarray,
    probs_u8: np.ndarray | None,
    inv_norm: np.ndarray | None = None,
) -> None:
    """Write one finished band (K, b, W) of probabilities (times inv_norm (b, W) when given)
    into rows row0.. of the outputs."""
    rows = band.shape[1]
    _argmax_into(band, ids[row0 : row0 + rows])
    if probs_u8 is not None:
        scale: np.ndarray | float = 1.0 if inv_norm is None else inv_norm
        for k in range(band.shape[0]):
            _to_u8_into(band[k], probs_u8[k, row0 : row0 + rows], scale)


def _outputs(
    num_classes: int, size: tuple[int, int], want_probs: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    ids = np.empty(size, ids_dtype(num_classes))
    probs = np.empty((num_classes, *size), np.uint8) if want_probs else None
    return ids, probs


def _band_rows(num_classes: int, width: int, band_rows: int | None) -> int:
    if band_rows is not None:
        if band_rows < 1:
            raise BadInputError(f"band_rows {band_rows}: expected a whole number of rows >= 1")
        return band_rows
    return max(1, _BAND_FLOATS // max(1, num_classes * width))


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


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear taps along one axis: source indices i0, i1 and the float32
    weight of i1 for each of n_out output positions (clamped at the edges)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def iter_upsampled(
    probs: np.ndarray, size: tuple[int, int], band_rows: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(row0, band) pairs covering `size` (H, W): bilinear upsampling of (K, h, w) float32
    probabilities, each band a float32 (K, b, W) array of output rows row0..row0+b."""
    k, h, w = probs.shape
    out_h, out_w = size
    rows = _band_rows(k, out_w, band_rows)
    y0, y1, wy = _linear_taps(h, out_h)
    x0, x1, wx = _linear_taps(w, out_w)
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


# -- tile mode ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Where the windows of tile mode lie, in the coordinates of the padded image.

    The image occupies rows pad[0]..pad[0]+H and columns pad[2]..pad[2]+W of a padded
    image of `padded` size; windows start at every (y, x) of ys x xs."""

    tile: tuple[int, int]
    step: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    padded: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def _axis_layout(n: int, tile: int, step: int) -> tuple[int, int, tuple[int, ...]]:
    """Padding before/after and window starts along one axis of length n."""
    margin = (tile - step) // 2
    total = max(n + 2 * margin, tile)
    before = (total - n) // 2
    starts = [*range(0, total - tile, step), total - tile]
    return before, total - n - before, tuple(sorted(set(starts)))


def tile_grid(size: tuple[int, int], tile: tuple[int, int], overlap: float = 0.25) -> TileGrid:
    """The window layout of tile mode for an image of `size` (height, width)."""
    tile = _check_size(tile, "tile size", MAX_TILE_SIDE)
    _check_overlap(overlap)
    step = tuple(max(1, math.floor(round(t * (1.0 - overlap), 6))) for t in tile)
    top, bottom, ys = _axis_layout(size[0], tile[0], step[0])
    left, right, xs = _axis_layout(size[1], tile[1], step[1])
    padded = (size[0] + top + bottom, size[1] + left + right)
    return TileGrid(tile, (step[0], step[1]), (top, bottom, left, right), padded, ys, xs)


def window_weights(length: int, blend: str = "gaussian") -> np.ndarray:
    """The 1-D float32 blend weight over a window side of `length` pixels, max 1, never 0.

    gaussian: exp(-d^2 / 2 sigma^2), sigma = length / 8 (nnU-Net, MONAI); linear: a tent,
    about 1/length at the outermost pixels; constant: ones. The 2-D weight of a window is the
    outer product of its two sides, so the sum over a grid of windows is separable too."""
    _check_blend(blend)
    pos = np.arange(length, dtype=np.float64) + 0.5
    if blend == "constant":
        w = np.ones(length)
    elif blend == "linear":
        w = 1.0 - np.abs(pos / (length / 2.0) - 1.0)
        w /= w.max()
    else:
        sigma = max(length * GAUSSIAN_SIGMA, 1e-3)
        w = np.exp(-((pos - length / 2.0) ** 2) / (2.0 * sigma**2))
        w /= w.max()
    return np.maximum(w, 1e-6).astype(np.float32)


def _coverage(starts: tuple[int, ...], weights: np.ndarray, total: int) -> np.ndarray:
    """Sum of the 1-D window weights over all windows of one axis: (total,) float32."""
    acc = np.zeros(total, np.float64)
    for s in starts:
        acc[s : s + weights.size] += weights
    return acc.astype(np.float32)


def _windows(image: np.ndarray, grid: TileGrid) -> Iterator[tuple[int, int, np.ndarray]]:
    """(y, x, window (th, tw, C) uint8) in row-major order; mirror indexing at the borders."""
    th, tw = grid.tile
    height, width = image.shape[:2]
    top, _, left, _ = grid.pad
    rows = reflect_index(np.arange(grid.padded[0]) - top, height)
    cols = reflect_index(np.arange(grid.padded[1]) - left, width)
    for y in grid.ys:
        r0 = y - top
        rows_inside = r0 >= 0 and r0 + th <= height
        for x in grid.xs:
            c0 = x - left
            if rows_inside and c0 >= 0 and c0 + tw <= width:
                yield y, x, image[r0 : r0 + th, c0 : c0 + tw]
            else:
                yield y, x, image[rows[y : y + th, None], cols[None, x : x + tw]]


def _batches(
    windows: Iterator[tuple[int, int, np.ndarray]], batch_size: int, tile: tuple[int, int], channels: int
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    buf = np.empty((batch_size, *tile, channels), np.uint8)
    where: list[tuple[int, int]] = []
    for y, x, window in windows:
        buf[len(where)] = window
        where.append((y, x))
        if len(where) == batch_size:
            yield where, buf
            where = []
    if where:
        yield where, buf[: len(where)]


class _Band:
    """The accumulator of tile mode: weighted probabilities for padded rows
    base..base+capacity over the padded width, finished rows written to the outputs."""

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        image_size: tuple[int, int],
        want_probs: bool,
        sum_y: np.ndarray,
        sum_x: np.ndarray,
    ) -> None:
        gaps = np.diff(grid.ys)
        self.capacity = grid.tile[0] + (int(gaps.max()) if gaps.size else 0)
        self.acc = np.zeros((num_classes, self.capacity, grid.padded[1]), np.float32)
        self.base = 0  # padded row of acc[:, 0]
        self.done = 0  # padded rows below this are finished and emitted
        self.grid = grid
        self.image_size = image_size
        self.sum_y, self.sum_x = sum_y, sum_x
        self.ids, self.probs_u8 = _outputs(num_classes, image_size, want_probs)

    def add(self, y: int, x: int, weighted: np.ndarray) -> None:
        """Add one window's weighted (K, th, tw) probabilities at padded (y, x)."""
        if y > self.done:
            self.finish(y)
        th, tw = self.grid.tile
        if y + th > self.base + self.capacity:  # move the unfinished rows to the front
            keep = self.base + self.capacity - y
            self.acc[:, :keep] = self.acc[:, y - self.base :]
            self.acc[:, keep:] = 0.0
            self.base = y
        r = y - self.base
        self.acc[:, r : r + th, x : x + tw] += weighted

    def finish(self, upto: int) -> None:
        """Emit padded rows done..upto (no window still to come touches them)."""
        top, _, left, _ = self.grid.pad
        height, width = self.image_size
        lo, hi = max(self.done, top), min(upto, top + height)
        if lo < hi:
            band = self.acc[:, lo - self.base : hi - self.base, left : left + width]
            inv = None
            if self.probs_u8 is not None:
                inv = np.reciprocal(np.outer(self.sum_y[lo:hi], self.sum_x[left : left + width]))
            _emit(band, lo - top, self.ids, self.probs_u8, inv)
        self.done = max(self.done, upto)


def segment_tiled(
    image_u8: np.ndarray,
    predict: Predict,
    tile: tuple[int, int],
    *,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    want_probs: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tile mode (see the module docstring): overlap-tile with blended windows, in bands."""
    image = _as_hwc(image_u8)
    _check_blend(blend)
    _check_batch(batch_size)
    size = (image.shape[0], image.shape[1])
    grid = tile_grid(size, tile, overlap)
    wy, wx = window_weights(grid.tile[0], blend), window_weights(grid.tile[1], blend)
    weight = np.outer(wy, wx)
    sum_y = _coverage(grid.ys, wy, grid.padded[0])
    sum_x = _coverage(grid.xs, wx, grid.padded[1])
    band: _Band | None = None
    for where, batch in _batches(_windows(image, grid), batch_size, grid.tile, image.shape[2]):
        probs = _checked(predict(batch), len(where), grid.tile)
        if band is None:
            band = _Band(grid, probs.shape[1], size, want_probs, sum_y, sum_x)
        elif probs.shape[1] != band.acc.shape[0]:
            raise ModelError(f"the model returned {probs.shape[1]} classes, earlier {band.acc.shape[0]}")
        for (y, x), p in zip(where, probs, strict=True):
            band.add(y, x, np.multiply(p, weight, out=p if p.flags.writeable else None))
    assert band is not None  # a grid always has at least one window
    band.finish(grid.padded[0])
    return band.ids, band.probs_u8


# -- the entry point ---------------------------------------------------------------------


def segment_image(
    image_u8: np.ndarray,
    predict: Predict,
    *,
    mode: str,
    model_size: tuple[int, int] | None = None,
    tile: tuple[int, int] | None = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    keep_aspect: bool = False,
    stride: int = 32,
    want_probs: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one uint8 (H, W[, C]) image: class ids (H, W) and, with want_probs,
    uint8 (K, H, W) probabilities. `tile` defaults to `model_size` in tile mode."""
    if mode not in MODES:
        raise BadInputError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    _check_overlap(overlap)
    _check_blend(blend)
    _check_batch(batch_size)
    if mode == "native":
        return segment_native(image_u8, predict, stride=stride, want_probs=want_probs)
    if mode == "resize":
        if model_size is None:
            raise BadInputError("resize mode needs the model's input size (height, width)")
        return segment_resized(image_u8, predict, model_size, keep_aspect=keep_aspect, want_probs=want_probs)
    window = tile if tile is not None else model_size
    if window is None:
        raise BadInputError("tile mode needs a tile size (height, width), e.g. --tile 256 256")
    return segment_tiled(
        image_u8, predict, window, overlap=overlap, blend=blend, batch_size=batch_size, want_probs=want_probs
    )


# -- argument checks ---------------------------------------------------------------------


def _check_overlap(overlap: float) -> None:
    ok = isinstance(overlap, (int, float)) and not isinstance(overlap, bool) and 0.0 <= overlap < 1.0
    if not ok:
        raise BadInputError(f"--overlap {overlap}: expected a fraction in [0, 1), e.g. 0.25")


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise BadInputError(f"--blend {blend}: expected one of {', '.join(BLENDS)}")


def _check_batch(batch_size: int) -> None:
    if not (
        isinstance(batch_size, int) and not isinstance(batch_size, bool) and 1 <= batch_size <= MAX_BATCH
    ):
        raise BadInputError(
            f"--batch-size {batch_size}: expected a whole number of windows in 1..{MAX_BATCH}, e.g. 4"
        )


def _check_size(size: tuple[int, int], what: str, limit: int = 65536) -> tuple[int, int]:
    values = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(values) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= limit for v in values
    ):
        shown = "x".join(str(v) for v in values) if values else repr(size)
        raise BadInputError(
            f"{what} {shown}: expected (height, width) of whole numbers in 1..{limit}, e.g. (256, 256)"
        )
    return int(values[0]), int(values[1])
