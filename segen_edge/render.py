"""Renderings of a class-id mask in bounded memory: colour mask, overlay, cutout, binary,
class fractions, palette PNG, per-class probabilities.

`ids` is a (H, W) uint8 (or uint16, more than 256 classes) array of class ids. Every
function works in bands of rows (a quarter megapixel each), in uint8 or float32: numpy turns
index arrays into intp and promotes mixed arithmetic to float64, so a 48-megapixel mask
done in one go would make 400 MB temporaries. Only the outputs are full size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from .errors import BadInputError

_BAND_PIXELS = 1 << 18  # a quarter megapixel: a few MB of float32 per band
PROBS_KEY = "probs"  # the (K, H, W) uint8 array in a probabilities .npz
NAMES_KEY = "class_names"


def _bands(height: int, width: int) -> Iterator[slice]:
    rows = max(1, _BAND_PIXELS // max(1, width))
    for r0 in range(0, height, rows):
        yield slice(r0, min(height, r0 + rows))


def _check_ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype not in (np.uint8, np.uint16):
        raise BadInputError(
            f"mask of shape {ids.shape} and dtype {ids.dtype}; expected (H, W) uint8 or uint16"
        )
    return ids


def _palette(palette_u8: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    palette = np.asarray(palette_u8)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] < 1:
        raise BadInputError(f"palette of shape {palette.shape}; expected (classes, 3) RGB colours")
    if palette.dtype != np.uint8:
        if palette.min() < 0 or palette.max() > 255:
            raise BadInputError("palette colours outside 0..255; expected [r, g, b] of 0..255")
        palette = palette.astype(np.uint8)
    return palette


def _lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table[ids] for a band, naming an id the table has no entry for."""
    top = int(ids.max()) if ids.size else 0
    if top >= table.shape[0]:
        raise BadInputError(f"mask holds class id {top} but only {table.shape[0]} classes are known")
    return table[ids]


def _rgb(image_u8: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The image as (H, W, 3 or 1) uint8 of the mask's size (grey broadcasts, alpha dropped)."""
    image = np.asarray(image_u8)
    if image.dtype != np.uint8:
        raise BadInputError(f"image of dtype {image.dtype}; expected uint8 pixels")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadInputError(f"image of shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if image.shape[:2] != shape:
        raise BadInputError(
            f"image of {image.shape[0]}x{image.shape[1]} but mask of {shape[0]}x{shape[1]}; "
            "give the image the mask was made from"
        )
    return image[:, :, :3]


def colorize(ids: np.ndarray, palette_u8: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8, each pixel its class's palette colour."""
    ids, palette = _check_ids(ids), _palette(palette_u8)
    out = np.empty((*ids.shape, 3), np.uint8)
    for rows in _bands(*ids.shape):
        out[rows] = _lookup(palette, ids[rows])
    return out


def overlay(
    image_u8: np.ndarray,
    ids: np.ndarray,
    palette_u8: np.ndarray | Sequence[Sequence[int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """round(image * (1 - alpha) + colour * alpha) as (H, W, 3) uint8; grey images broadcast."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
        raise BadInputError(f"--alpha {alpha}: expected a number in [0, 1], e.g. 0.5")
    ids, palette = _check_ids(ids), _palette(palette_u8)
    image = _rgb(image_u8, ids.shape)
    keep, mix = np.float32(1.0 - alpha), np.float32(alpha)
    colours = palette.astype(np.float32) * mix  # (K, 3), small
    out = np.empty((*ids.shape, 3), np.uint8)
    for rows in _bands(*ids.shape):
        blend = _lookup(colours, ids[rows])  # (b, W, 3) float32
        blend += image[rows] * keep
        np.rint(blend, out=blend)
        np.clip(blend, 0.0, 255.0, out=blend)
        out[rows] = blend
    return out


def fractions(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of pixels of each class: float64 (num_classes,), summing to 1."""
    ids = _check_ids(ids)
    counts = np.zeros(num_classes, np.int64)
    for rows in _bands(*ids.shape):
        band = np.bincount(ids[rows].ravel(), minlength=num_classes)
        if band.size > num_classes:
            raise BadInputError(
                f"mask holds class id {band.size - 1} but only {num_classes} classes are known"
            )
        counts += band
    return counts / max(1, ids.size)


def _keep_table(keep: Sequence[int], size: int) -> np.ndarray:
    """A (size,) uint8 table: 255 for the kept class ids, 0 for the rest."""
    table = np.zeros(size, np.uint8)
    for k in keep:
        if not (isinstance(k, (int, np.integer)) and 0 <= k < size):
            raise BadInputError(f"keep class {k!r}: expected class ids in 0..{size - 1}")
        table[k] = 255
    return table


def binary(ids: np.ndarray, keep: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """(H, W) uint8: 255 where the pixel's class is in `keep`, else 0."""
    ids = _check_ids(ids)
    table = _keep_table(keep, num_classes or np.iinfo(ids.dtype).max + 1)
    out = np.empty(ids.shape, np.uint8)
    for rows in _bands(*ids.shape):
        out[rows] = _lookup(table, ids[rows])
    return out


def cutout(
    image_u8: np.ndarray,
    ids: np.ndarray,
    keep: Sequence[int],
    num_classes: int | None = None,
    alpha: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W, 4) uint8 RGBA: the image's colours, alpha 255 where the class is kept, else 0
    (or the (H, W) uint8 `alpha` given, e.g. kept_alpha's)."""
    ids = _check_ids(ids)
    image = _rgb(image_u8, ids.shape)
    if alpha is None:
        alpha = binary(ids, keep, num_classes)
    elif alpha.shape != ids.shape:
        raise BadInputError(f"alpha of shape {alpha.shape} for a mask of {ids.shape}")
    out = np.empty((*ids.shape, 4), np.uint8)
    out[:, :, :3] = image  # a grey (H, W, 1) image broadcasts to the three channels
    out[:, :, 3] = alpha
    return out


def kept_alpha(probabilities_u8: np.ndarray, keep: Sequence[int], rows: int = 256) -> np.ndarray:
    """(H, W) uint8: the summed uint8 probabilities (K, H, W) of the kept classes, in bands
    of rows (a 48-megapixel image never makes a wide temporary)."""
    height = probabilities_u8.shape[1]
    out = np.empty(probabilities_u8.shape[1:], np.uint8)
    for r0 in range(0, height, rows):
        band = np.zeros((min(rows, height - r0), probabilities_u8.shape[2]), np.uint16)
        for k in keep:
            band += probabilities_u8[k, r0 : r0 + rows]
        np.minimum(band, 255, out=band)
        out[r0 : r0 + rows] = band
    return out


def class_indices(keep: Sequence[str | int], class_names: Sequence[str]) -> tuple[int, ...]:
    """Class names (or ids, or digit strings) -> class ids, naming any that is unknown."""
    found: list[int] = []
    for item in keep:
        if isinstance(item, str) and item in class_names:
            found.append(list(class_names).index(item))
        elif isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit()):
            k = int(item)
            if not 0 <= k < len(class_names):
                raise BadInputError(
                    f"--keep {item}: the model has classes 0..{len(class_names) - 1} "
                    f"({', '.join(class_names)})"
                )
            found.append(k)
        else:
            raise BadInputError(f"--keep {item}: no such class; expected one of {', '.join(class_names)}")
    if not found:
        raise BadInputError(f"--keep names no class; expected one or more of {', '.join(class_names)}")
    return tuple(dict.fromkeys(found))


def mask_image(ids: np.ndarray, palette_u8: np.ndarray | Sequence[Sequence[int]]) -> Image.Image:
    """The class ids as a PIL image: a palette ("P") image coloured by the model's palette
    for up to 256 classes; a 16-bit grey ("I;16") image of the ids beyond."""
    ids, palette = _check_ids(ids), _palette(palette_u8)
    top = int(ids.max()) if ids.size else 0
    if top >= palette.shape[0]:
        raise BadInputError(f"mask holds class id {top} but only {palette.shape[0]} classes are known")
    if palette.shape[0] > 256:
        return Image.fromarray(ids.astype(np.uint16, copy=False))  # mode I;16
    img = Image.fromarray(ids.astype(np.uint8, copy=False))  # mode L; putpalette makes it P
    flat = palette.reshape(-1).tolist()
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def probability_planes(probs_u8: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """(K, H, W) uint8 probabilities -> {class name: (H, W) uint8 plane} (views, no copies)."""
    if probs_u8.ndim != 3 or probs_u8.dtype != np.uint8 or probs_u8.shape[0] != len(class_names):
        raise BadInputError(
            f"probabilities of shape {probs_u8.shape} and dtype {probs_u8.dtype}; "
            f"expected ({len(class_names)}, H, W) uint8, one plane per class"
        )
    return {name: probs_u8[k] for k, name in enumerate(class_names)}


def write_probabilities(
    target: str | Path | IO[bytes],
    probs_u8: np.ndarray,
    class_names: Sequence[str],
    compress: bool = True,
) -> None:
    """Save (K, H, W) uint8 probabilities (round(p * 255)) and the class names as an .npz:
    arrays `probs` and `class_names` (strings, readable without pickle)."""
    probability_planes(probs_u8, class_names)  # checks the shape
    names = np.asarray(list(class_names), dtype=str)
    if compress:
        np.savez_compressed(target, probs=probs_u8, class_names=names)
    else:
        np.savez(target, probs=probs_u8, class_names=names)


def read_probabilities(source: str | Path | IO[bytes]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The (K, H, W) uint8 probabilities and class names of a write_probabilities file."""
    try:
        with np.load(source, allow_pickle=False) as data:
            return data[PROBS_KEY], tuple(str(n) for n in data[NAMES_KEY])
    except (OSError, KeyError, ValueError) as exc:
        raise BadInputError(
            f"{source}: not a probabilities .npz ({exc}); expected one written by --save prob"
        ) from None
