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

Here: tile mode, the entry point (segment_image) and the argument checks; resize and
native modes are in resizing.py, predictors and probabilities in probabilities.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from .checks import whole
from .errors import BadInputError, ModelError
from .probabilities import Predict, _as_hwc, _check_size, _checked, _emit, _outputs, reflect_index
from .resizing import segment_native, segment_resized

MODES = ("resize", "tile", "native")
BLENDS = ("gaussian", "linear", "constant")
MAX_TILE_SIDE = 8192  # larger windows are a typo: a batch of them would not fit in memory
MAX_BATCH = 1024
GAUSSIAN_SIGMA = 1.0 / 8.0  # of the tile side, as nnU-Net and MONAI


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
    check_overlap(overlap)
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
    check_blend(blend)
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
    check_blend(blend)
    check_batch(batch_size)
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
    check_mode(mode)
    check_overlap(overlap)
    check_blend(blend)
    check_batch(batch_size)
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


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BadInputError(f"--mode {mode}: expected one of {', '.join(MODES)}")


def check_overlap(overlap: float) -> None:
    ok = isinstance(overlap, (int, float)) and not isinstance(overlap, bool) and 0.0 <= overlap < 1.0
    if not ok:
        raise BadInputError(f"--overlap {overlap}: expected a fraction in [0, 1), e.g. 0.25")


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise BadInputError(f"--blend {blend}: expected one of {', '.join(BLENDS)}")


def check_batch(batch_size: int) -> None:
    whole(batch_size, "--batch-size", 1, MAX_BATCH, "windows", " (e.g. 4)")
