"""Find, decode and write images. PIL's (width, height) stays inside this module.

Decoding is EXIF-aware and turns every mode Pillow reads (grey, 16-bit, palette, LA/RGBA,
CMYK, animated) into 8-bit RGB or grey. Writes are atomic: a temporary file in the target
folder, then a rename, so a reader never sees half a PNG.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import glob
import hashlib
import logging
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError, SegenError
from .metadata import ModelInfo

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
OUTPUT_SUFFIXES = (".mask.png", ".color.png", ".overlay.png", ".cutout.png", ".binary.png")  # never inputs
DEFAULT_MAX_PIXELS = 120_000_000
EXPECTED = "expected PNG, JPEG, BMP, WebP, TIFF or GIF"
MANIFEST_NAME = "segen-manifest.jsonl"  # manifest.MANIFEST_NAME, here to keep imports light


@dataclass(frozen=True)
class Source:
    """An input image: its path and its path relative to the input root (mirrored under --out)."""

    path: Path
    rel: Path
    error: str = ""  # set when the input is known to be unusable before decoding


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what the decoder had to say about it."""

    image_u8: np.ndarray  # (height, width, channels) uint8
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.image_u8.shape[0]), int(self.image_u8.shape[1]))


# -- finding inputs ----------------------------------------------------------------------


def is_image_name(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in IMAGE_SUFFIXES and not name.endswith(OUTPUT_SUFFIXES)


def find_images(inputs: Iterable[str | Path], recursive: bool = False) -> Iterator[Source]:
    """The images named by files, folders or glob patterns, lazily, in sorted order.

    A file given by name is yielded whatever its suffix (so a bad one gets a clear error);
    folders yield only files with image suffixes. Symlinked folders are followed once with
    --recursive; loops are skipped. An argument that names nothing is a BadInputError raised
    here, before anything is yielded, so a typo never leaves a batch half done; a folder that
    cannot be listed is yielded as a Source with an `error`, so the batch goes on.
    """
    parts: list[Callable[[], Iterator[Source]]] = []
    for arg in inputs:
        text = os.fspath(arg)
        path = Path(text)
        unsupported(text)
        if path.is_dir():
            parts.append(functools.partial(_walk, path, recursive))
        elif path.exists() or path.is_symlink():
            if path.suffix.lower() in VIDEO_SUFFIXES:
                raise BadInputError(f"{_text(path)}: {VIDEO}")
            parts.append(functools.partial(iter, [Source(path, Path(path.name))]))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=recursive))
            if not matches:
                raise BadInputError(f"{text}: the pattern matches no file; check the quotes and path")
            parts.append(functools.partial(_matches, text, matches, recursive))
        else:
            raise BadInputError(f"{text}: no such file or folder")
    return _once(source for part in parts for source in part())


VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".wmv", ".flv", ".mpg", ".mpeg"})
VIDEO = "video is not supported; extract frames first, e.g. with ffmpeg -i VIDEO frames/%06d.png"


def unsupported(text: str) -> None:
    """Refuse, by name, the inputs that are not image files: stdin, URLs."""
    if text == "-":
        raise BadInputError(
            "-: reading images from stdin is not supported; "
            "save them to files and pass the files or their folder"
        )
    if text.lower().startswith(("http://", "https://", "ftp://", "s3://", "gs://")):
        raise BadInputError(
            f"{_text(text)}: URLs are not supported; download the image first and pass the file"
        )


def _text(path: str | os.PathLike[str]) -> str:
    """A path for a one-line message: undecodable bytes escaped, newlines shown."""
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _once(sources: Iterator[Source]) -> Iterator[Source]:
    """Each file once, however many arguments name it (`photos photos/a.png ./photos/a.png`).
    Paths are compared as written (absolute, normalized), not through symlinks: a link is
    its own input."""
    seen: set[str] = set()
    for source in sources:
        key = os.path.abspath(source.path)
        if key not in seen:
            seen.add(key)
            yield source


def _recorded(folder: Path) -> frozenset[str]:
    from .manifest import recorded_paths

    return recorded_paths(folder)


def _matches(pattern: str, matches: list[str], recursive: bool) -> Iterator[Source]:
    root = glob_root(pattern)
    recorded: dict[str, frozenset[str]] = {}

    def is_output(m: Path) -> bool:
        """Listed by the manifest of its folder or of a folder above, up to the root."""
        full = os.path.abspath(m)
        folder = os.path.dirname(full)
        top = os.path.abspath(root)
        while True:
            if folder not in recorded:
                recorded[folder] = _recorded(Path(folder))
            if full in recorded[folder]:
                return True
            if folder == top or os.path.dirname(folder) == folder or not folder.startswith(top):
                return False
            folder = os.path.dirname(folder)

    for match in matches:
        m = Path(match)
        if m.name.lower().endswith(OUTPUT_SUFFIXES) or is_output(m):
            continue  # our own outputs: a re-run with --out inside the input folder
        if m.is_dir():
            yield from _walk(m, recursive)
        else:  # mirror the tree under the pattern's fixed part: d1/a.png, d2/a.png
            yield Source(m, Path(os.path.relpath(m, root)))


def glob_root(pattern: str) -> Path:
    """The fixed folder part of a glob pattern: `photos` for `photos/*/*.jpg`."""
    fixed = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(root: Path, recursive: bool) -> Iterator[Source]:
    """Images under `root`, sorted; the outputs a folder's manifest records are skipped."""
    seen: set[tuple[int, int]] = set()
    outputs: set[str] = set()

    def visit(folder: Path) -> Iterator[Source]:
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop or a folder linked twice
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:  # e.g. lost+found on a mounted disk: one failure, not the end
            why = f"{folder}: cannot list the folder ({exc.strerror}); check its permissions"
            yield Source(folder, folder.relative_to(root), error=why)
            return
        subfolders = []
        if any(entry.name == MANIFEST_NAME for entry in entries):
            outputs.update(_recorded(folder))
        for entry in entries:
            p = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks; False for broken ones
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    subfolders.append(p)
            elif is_image_name(p) and not (outputs and os.path.abspath(p) in outputs):
                yield Source(p, p.relative_to(root))
        for sub in subfolders:
            yield from visit(sub)

    yield from visit(root)


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


# -- writing -----------------------------------------------------------------------------


class WriteError(SegenError, OSError):
    """An output that cannot be written. An OSError, so a batch counts it as one failed file;
    a SegenError, so elsewhere (--summary, --grid, --json) the CLI prints one line, exit 1."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file whole or not at all: temporary file beside it, then rename.

    Operating-system failures (no such folder, read-only, disk full) raise WriteError.
    """
    path = Path(path)

    def fail(exc: OSError) -> WriteError:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            return WriteError(f"{path}: cannot write: a file stands where a folder should be; pick another")
        return WriteError(f"{path}: cannot write ({exc.strerror or exc}); check the folder is writable")

    try:
        fd, tmp = _open_temp(path)
    except FileNotFoundError:  # the folder is missing: make it (once, not on every write)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _open_temp(path)
        except OSError as exc:
            raise fail(exc) from None
    except OSError as exc:
        raise fail(exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise fail(exc) from None
        raise


def _open_temp(path: Path) -> tuple[int, str]:
    """A new hidden temporary file beside `path`: `.NAME.PID-THREAD.part`, exclusive. Named
    by process and thread, it needs one system call (mkstemp's random names cost more, which
    shows when a batch writes thousands of small files); a leftover of a killed process with
    a recycled pid makes it fall back to a random name."""
    name = _temp_stem(path.name)
    tmp = path.with_name(f".{name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), str(tmp)
    except FileExistsError:
        return tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=path.parent)


TEMP_NAME_ROOM = 180  # bytes of the target's name kept in its temporary name (limit: 255)


def _temp_stem(name: str) -> str:
    """The target's name, or for a long one (230-255 bytes) its start and a hash, so the
    temporary name (`.NAME.PID-THREAD.part`, or mkstemp's) stays under 255 bytes."""
    raw = os.fsencode(name)
    if len(raw) <= TEMP_NAME_ROOM:
        return name
    tag = "~" + hashlib.sha256(raw).hexdigest()[:12]
    cut = name
    while len(os.fsencode(cut)) > TEMP_NAME_ROOM - len(tag):
        cut = cut[:-1]
    return cut + tag


def save_image(path: str | Path, image: Image.Image | np.ndarray, fmt: str = "PNG") -> None:
    """Atomically save a Pillow image or a uint8 array (grey or RGB)."""
    if isinstance(image, np.ndarray):
        array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        image = Image.fromarray(array)
    img = image
    options = {"compress_level": 1} if fmt == "PNG" else {}  # fast; masks compress well anyway
    atomic_write(path, lambda fh: img.save(fh, format=fmt, **options))


def write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)
