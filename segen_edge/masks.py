"""Segmentation masks: find image/mask pairs on disk and decode masks to class ids.

numpy + Pillow only: training, export and the runtime's evaluation all decode masks here,
so a mask means the same classes everywhere. A decoded mask is a uint8 (height, width) array
of class ids; IGNORE_INDEX (segen_edge.metrics) marks pixels that loss and metrics skip.

Encodings:
  index    grey or palette PNG whose pixel value is the class id (255 = ignore)
  binary   0 / 255 (or any grey: >= 128 is foreground) -> 0 / 1
  trimap   Oxford-IIIT Pet: 1 pet, 2 background, 3 border -> 0, 1, 2
  palette  palette PNG (Pascal VOC): palette index = class id, 255 = ignore
  auto     read from the mask's own values (classify_encoding); a training run detects a
           data set's encoding once over a sample (train.labels) and records it in the card
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError
from .files import is_image_name
from .metrics import IGNORE_INDEX

ENCODINGS = ("auto", "index", "binary", "trimap", "palette")
# (image folder, mask folder) names, tried in this order under the data folder (and under
# its train/ subfolder, e.g. the membrane root).
LAYOUTS: tuple[tuple[str, str], ...] = (
    ("images", "trimaps"),
    ("images", "masks"),
    ("images", "labels"),
    ("images", "annotations"),
    ("image", "label"),
    ("image", "mask"),
    ("images", "label"),
    ("JPEGImages", "SegmentationClass"),
    ("JPEGImages", "SegmentationClassPNG"),
    ("imgs", "masks"),
)
MASK_NAME_SUFFIXES = ("_mask", "-mask", "_label", "-label", "_labels", "_seg", "_trimap")


@dataclass(frozen=True)
class Pair:
    """An image and its mask (None when the layout has no mask for it)."""

    stem: str
    image: Path
    mask: Path | None


# -- finding pairs -----------------------------------------------------------------------


def _image_files(folder: Path) -> dict[str, Path]:
    """stem -> path of the image files directly in `folder` (first by name on clashes)."""
    found: dict[str, Path] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise BadInputError(f"{folder}: cannot list the folder ({exc.strerror})") from None
    for name in names:
        path = folder / name
        if name.startswith(".") or not is_image_name(path) or not path.is_file():
            continue
        found.setdefault(path.stem, path)
    return found


def mask_stem(stem: str) -> str:
    """A mask file's stem without a suffix such as _mask or -label: its image's stem."""
    for suffix in MASK_NAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def find_pairs(data_dir: str | Path, require_masks: bool = True) -> list[Pair]:
    """Image/mask pairs under `data_dir`, matched by file stem, sorted by stem.

    Understands images/ + trimaps/ (Oxford pets), images/ + masks/, labels/ or annotations/,
    image/ + label/ (membrane, also from its root through train/) and VOC's JPEGImages/ +
    SegmentationClass/. With require_masks=False, images without a mask are kept with
    mask=None, and a plain folder of images is accepted.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise BadInputError(f"{root}: no such folder; give the data set's folder with --data")
    bases = [root] + [root / sub for sub in ("train", "training") if (root / sub).is_dir()]
    for base in bases:
        for image_name, mask_name in LAYOUTS:
            image_dir, mask_dir = base / image_name, base / mask_name
            if not (image_dir.is_dir() and mask_dir.is_dir()):
                continue
            images = _image_files(image_dir)
            masks: dict[str, Path] = {}
            for stem, path in _image_files(mask_dir).items():
                masks.setdefault(stem, path)
                masks.setdefault(mask_stem(stem), path)
            pairs = [
                Pair(stem, path, masks.get(stem))
                for stem, path in sorted(images.items())
                if require_masks is False or stem in masks
            ]
            if any(p.mask is not None for p in pairs):
                return pairs
    if not require_masks:
        for base in bases:
            for image_name in dict.fromkeys(name for name, _ in LAYOUTS):
                if (base / image_name).is_dir() and (images := _image_files(base / image_name)):
                    return [Pair(s, p, None) for s, p in sorted(images.items())]
        if images := _image_files(root):
            return [Pair(s, p, None) for s, p in sorted(images.items())]
    expected = ", ".join(f"{i}/ + {m}/" for i, m in LAYOUTS[:8])
    raise BadInputError(
        f"{root}: found no image/mask pairs matched by file stem; expected one of the layouts "
        f"{expected} (directly in the folder or in its train/ subfolder)"
    )


# -- decoding ----------------------------------------------------------------------------


def _open_mask(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise BadInputError(f"{path}: mask file not found; check the path") from None
    except UnidentifiedImageError:
        raise BadInputError(f"{path}: not an image Pillow can read; expected a PNG mask") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable mask ({exc}); expected a PNG mask") from None
    return ImageOps.exif_transpose(img)  # follow the photo if it carries an orientation


def _mask_values(img: Image.Image, path: str | Path) -> np.ndarray:
    """The mask's raw values as a 2-D array (palette indices for mode P)."""
    if img.mode in ("P", "L"):
        return np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.int64)
        if wide.max(initial=0) > 255:
            raise BadInputError(
                f"{path}: 16-bit mask with values up to {int(wide.max())}; expected class ids "
                "0..254; save the mask as 8-bit"
            )
        return wide.astype(np.uint8)
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    rgb = np.asarray(img.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    raise BadInputError(
        f"{path}: colour ({img.mode}) mask; expected a grey class-index, binary or palette PNG; "
        "convert colours to class ids (e.g. a palette PNG) first"
    )


def classify_encoding(values: set[int], modes: set[str]) -> str:
    """The encoding that masks with these raw values and Pillow modes most likely use."""
    if modes == {"P"}:
        return "palette"
    if values and values <= {1, 2, 3} and {1, 2} <= values:
        return "trimap"
    if values <= {0, 255} and 255 in values:
        return "binary"
    small = {v for v in values if v != IGNORE_INDEX}
    if not small or max(small) < 64:
        return "index"
    return "binary"  # many grey levels (anti-aliased or JPEG masks): threshold at 128


def read_mask_values(path: str | Path) -> tuple[np.ndarray, str]:
    """A mask file's raw values (palette indices for palette PNGs) and its Pillow mode."""
    img = _open_mask(path)
    return _mask_values(img, path), img.mode


def load_mask(path: str | Path, encoding: str = "auto") -> np.ndarray:
    """Decode a mask file to uint8 (height, width) class ids; IGNORE_INDEX = ignore."""
    if encoding not in ENCODINGS:
        raise BadInputError(f"mask encoding {encoding!r} is unknown; expected one of {', '.join(ENCODINGS)}")
    img = _open_mask(path)
    values = _mask_values(img, path)
    if encoding == "auto":
        encoding = classify_encoding({int(v) for v in np.unique(values)}, {img.mode})
    if encoding == "index":
        return np.ascontiguousarray(values, dtype=np.uint8)
    if encoding == "binary":
        return (values >= 128).astype(np.uint8)
    if encoding == "trimap":
        lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lookup[1], lookup[2], lookup[3] = 0, 1, 2
        return lookup[values]
    if img.mode != "P":  # palette
        raise BadInputError(
            f"{path}: mode {img.mode} mask, not a palette PNG; use --mask-encoding index "
            "(grey values are class ids) or binary"
        )
    return np.ascontiguousarray(values, dtype=np.uint8)


# -- colours -------------------------------------------------------------------------


def _voc_colour(index: int) -> tuple[int, int, int]:
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return (r, g, b)


# High-contrast first colours (readable over photos), then evenly spread hues.
_DISTINCT = (
    (255, 176, 0),
    (40, 48, 110),
    (255, 255, 255),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
)


def default_palette(n: int, encoding: str = "") -> tuple[tuple[int, int, int], ...]:
    """n distinct RGB colours. Pets (trimap): amber pet, dark blue background, white border;
    palette masks get the VOC colours; binary masks black and white like the mask files."""
    if encoding == "palette":
        return tuple(_voc_colour(i) for i in range(n))
    if encoding == "binary" and n == 2:
        return ((0, 0, 0), (255, 255, 255))
    colours = list(_DISTINCT[:n])
    golden = 0.618033988749895
    hue = 0.11
    while len(colours) < n:
        hue = (hue + golden) % 1.0
        lightness = 0.45 + 0.15 * (len(colours) % 2)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.8)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)
