"""Model outputs -> probabilities -> class ids, and the helpers every mode shares.

A *predictor* (Predict) turns a uint8 batch (N, h, w, C) into float32 class probabilities
(N, K, h, w); `make_predictor` builds one from a session's run (preprocessing, the run,
softmax). Here too: the ids' dtype, argmax and uint8 probability planes written band by
band (`_emit`), mirror indices, and the checks of images and sizes that resizing.py and
tiling.py both make.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadInputError, ModelError

if TYPE_CHECKING:
    from .metadata import ModelInfo

Predict = Callable[[np.ndarray], np.ndarray]
"""uint8 (N, h, w, C) windows or images -> float32 (N, K, h, w) class probabilities."""

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
    if outputs.ndim == 3 and num_classes in (None, 2):  # (N, h, w): one foreground map, squeezed
        return _binary(np.ascontiguousarray(outputs[:, None], dtype=np.float32), output)
    if outputs.ndim != 4:
        raise ModelError(f"the model returned shape {outputs.shape}; expected (N, K, h, w) or (N, h, w, K)")
    values = outputs if layout == "NCHW" else outputs.transpose(0, 3, 1, 2)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.shape[1] == 1 and num_classes in (None, 2):
        return _binary(values, output)
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


def _binary(values: np.ndarray, output: str) -> np.ndarray:
    """A one-channel output (a binary model's foreground: a logit, or a sigmoid's
    probability) -> (N, 2, h, w) probabilities of background and foreground."""
    if output == "logits":
        foreground = np.empty_like(values)
        np.negative(values, out=foreground)
        np.exp(np.clip(foreground, -80.0, 80.0), out=foreground)  # no overflow at extreme logits
        foreground += 1.0
        np.reciprocal(foreground, out=foreground)
    else:
        foreground = np.clip(values, 0.0, 1.0)
    return np.concatenate([1.0 - foreground, foreground], axis=1)


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear taps along one axis: source indices i0, i1 and the float32
    weight of i1 for each of n_out output positions (clamped at the edges)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _stride(n_out: int, n_in: int) -> int | None:
    """s when an axis of n_in comes out as n_in / s (floor or ceiling), s >= 2; else None."""
    if n_out < 1 or n_out >= n_in:
        return None
    s = max(2, round(n_in / n_out))
    return s if n_out in (n_in // s, -(-n_in // s)) else None


def at_size(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, K, h, w) probabilities for inputs of `size` (H, W) at that size: as they are, or,
    from a model whose output is strided (SegFormer's come at a quarter of the input's
    size), upsampled bilinearly (half-pixel centres, as such models are upsampled in
    training). Any other mismatch is left for the shape checks to name."""
    if probs.ndim != 4 or tuple(probs.shape[2:]) == tuple(size):
        return probs
    h, w = probs.shape[2:]
    sy, sx = _stride(h, size[0]), _stride(w, size[1])
    if sy is None or sx is None or sy != sx:
        return probs
    y0, y1, wy = linear_taps(h, size[0])
    x0, x1, wx = linear_taps(w, size[1])
    rows = probs[:, :, y0] * (1.0 - wy)[:, None] + probs[:, :, y1] * wy[:, None]
    return np.ascontiguousarray(rows[..., x0] * (1.0 - wx) + rows[..., x1] * wx, dtype=np.float32)


def make_predictor(run: Callable[[np.ndarray], np.ndarray], info: ModelInfo) -> Predict:
    """A Predict from a function that runs the graph (float32 model input -> raw output)
    and the model's metadata (preprocessing, layout, output kind, class count)."""
    pre = info.preprocessing
    classes = len(info.class_names)

    def predict(batch_u8: np.ndarray) -> np.ndarray:
        raw = run(pre.to_model(batch_u8))
        probs = to_probabilities(raw, output=info.output, layout=info.layout, num_classes=classes)
        return at_size(probs, batch_u8.shape[1:3])

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
