"""Decode images and turn what users hold into model input. PIL's (width, height) stays
inside this module (and files.py's writers).

Decoding is EXIF-aware and turns every mode Pillow reads (grey, 16-bit, palette, LA/RGBA,
CMYK, animated) into 8-bit RGB or grey. Finding inputs and writing outputs (atomically) are
in files.py.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError
from .metadata import ModelInfo

DEFAULT_MAX_PIXELS = 120_000_000
EXPECTED = "expected PNG, JPEG, BMP, WebP, TIFF or GIF"


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what the decoder had to say about it."""

    image_u8: np.ndarray  # (height, width, channels) uint8
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.image_u8.shape[0]), int(self.image_u8.shape[1]))


# -- decoding ----------------------------------------------------------------------------


def load_image(path: str | Path, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode an image file to uint8 (height, width, channels), EXIF orientation applied."""
    path = Path(path)
    try:
        # A FIFO, socket or device named like an image would block or never end: refuse
        # anything that is not a regular file before opening it.
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise BadInputError(f"{path}: not a regular file (a pipe, socket or device); {EXPECTED}")
        with open(path, "rb") as fh:
            return decode_image(fh, channels, max_pixels, name=str(path))
    except BadInputError:
        raise
    except FileNotFoundError:
        reason = "broken symlink" if path.is_symlink() else "file not found"
        raise BadInputError(f"{path}: {reason}; check the path") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not an image; pass --recursive") from None
    except PermissionError:
        raise BadInputError(f"{path}: permission denied; make the file readable") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInputError(f"{path}: symlink loop; fix or remove the link") from None
        raise BadInputError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


@functools.cache
def _quiet_decoders() -> None:
    """Stop decoders printing on the process's stderr; their failures still reach us as
    exceptions, which become our one line naming the file.

    - Pillow logs some failures ('More samples per pixel than can be decoded: 2048') to the
      'PIL' logger, which Python prints on stderr when nothing is configured: a NullHandler
      stops that, and an application that configures logging still gets the records.
    - libtiff prints warnings such as 'tempfile.tif: Using code not yet in table.' straight
      to fd 2, in pieces that split our lines. Its handlers are switched off, found through
      /proc/self/maps (best effort: Linux only).
    """
    logging.getLogger("PIL").addHandler(logging.NullHandler())
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]}
        for path in paths:
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(lib, name)
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
    except (OSError, AttributeError):
        pass


def decode_image(
    fh: IO[bytes], channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>"
) -> Decoded:
    """Decode an open binary file. Any failure is a BadInputError naming `name`."""
    _quiet_decoders()
    head = fh.read(1)
    if not head:
        raise BadInputError(f"{name}: empty file (0 bytes); {EXPECTED}")
    fh.seek(0)
    width = height = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
            img: Image.Image = Image.open(fh)
            width, height = img.size
            if width * height > max_pixels:
                raise BadInputError(
                    f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,} (a guard against decompression bombs); "
                    "raise it with --max-pixels if the image is genuine"
                )
            note = ""
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1:
                note = f"animated ({frames} frames): used the first frame"
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            array = _to_u8(img, channels)
    except BadInputError:
        raise
    except UnidentifiedImageError:
        raise BadInputError(f"{name}: not an image Pillow can read; {EXPECTED}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise BadInputError(f"{name}: not a readable image ({_reason(exc)}); {EXPECTED}") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - limit disabled above
        raise BadInputError(f"{name}: {exc}; raise the limit with --max-pixels") from None
    except MemoryError:  # a header within --max-pixels that still does not fit in memory
        raise BadInputError(
            f"{name}: {width}x{height} does not fit in memory; lower --max-pixels to skip such images"
        ) from None
    return Decoded(array, note)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated file"
    if text.startswith(("decoder error", "decoding error", "broken data stream")):
        return f"damaged image data: {text}"  # Pillow's bare codec status, e.g. 'decoder error -2'
    return text[:80] or type(exc).__name__


def _to_u8(img: Image.Image, channels: int) -> np.ndarray:
    """Any Pillow mode -> uint8 array of 1 or 3 channels. Alpha is composited on black."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.int64)
        peak = 65535 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255
        grey = np.clip(wide * 255 // peak, 0, 255).astype(np.uint8)
        img = Image.fromarray(grey, mode="L")
    elif mode == "F":
        data = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        scaled = (data - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(data)
        img = Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


# -- what users hold ---------------------------------------------------------------------


def as_image_u8(
    image: str | os.PathLike[str] | Image.Image | np.ndarray,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """A path, a Pillow image of any mode, or an array -> uint8 (height, width, channels).

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha composited on black),
    uint8 or uint16 (scaled by 255 / 65535), or bool (0 / 255). Anything else is a
    BadInputError that says what arrived and what is expected.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(os.fspath(image)), channels, max_pixels).image_u8
    if isinstance(image, Image.Image):
        try:
            return _to_u8(ImageOps.exif_transpose(image), channels)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"PIL image ({image.mode}): cannot convert ({exc})") from None
    if not isinstance(image, np.ndarray):
        raise BadInputError(
            f"{type(image).__name__}: not an image; pass a path, a PIL image or a numpy array"
        )
    return _array_to_u8(image, channels)


def _array_to_u8(array: np.ndarray, channels: int) -> np.ndarray:
    shape, dtype = array.shape, array.dtype
    what = f"array of shape {list(shape)} and dtype {dtype}"
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise BadInputError(f"{what}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif dtype == np.uint16:
        array = (array.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif dtype != np.uint8:
        raise BadInputError(f"{what}: expected uint8 or uint16 pixels; convert with .astype(np.uint8)")
    if array.shape[2] == 4:  # composite on black, as decoding does
        alpha = array[:, :, 3:].astype(np.uint16)
        array = (array[:, :, :3].astype(np.uint16) * alpha // 255).astype(np.uint8)
    if channels == 1 and array.shape[2] == 3:
        return _to_u8(Image.fromarray(np.ascontiguousarray(array)), 1)
    if channels == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


# -- model input -------------------------------------------------------------------------


def resize_u8(image_u8: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a (height, width[, channels]) uint8 array to size (height, width)."""
    height, width = size
    if image_u8.shape[:2] == (height, width):
        return image_u8
    squeeze = image_u8.ndim == 3 and image_u8.shape[2] == 1
    img = Image.fromarray(image_u8[:, :, 0] if squeeze else image_u8)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = np.asarray(img.resize((width, height), resample))
    return out[:, :, None] if squeeze else out


def preprocess(image_u8: np.ndarray, info: ModelInfo, channels_first: bool = False) -> np.ndarray:
    """uint8 (h, w, c) image -> float32 (H, W, C) model input at info.image_size, NHWC order;
    (C, H, W) with `channels_first`, transposed while still uint8, in the pass that scales.

    The one preprocessing used by inference, calibration and evaluation alike.
    """
    pre = info.preprocessing
    if channels_first != pre.channels_first:
        pre = dataclasses.replace(pre, layout="NCHW" if channels_first else "NHWC")
    return pre.to_model(resize_u8(image_u8, info.image_size))


def to_pixels(values: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Invert preprocess's scaling: model values -> uint8 pixels."""
    pre = dataclasses.replace(info.preprocessing, layout="NHWC")
    return pre.to_pixels(values)
