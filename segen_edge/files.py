"""Find input images (files, folders, globs) and write outputs atomically.

Inputs: Source (a path and its path relative to the input root), find_images, glob_root.
Writes are atomic: a temporary file in the target folder, then a rename, so a reader never
sees half a PNG (atomic_write, save_image, write_text; WriteError when the system refuses).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from .errors import BadInputError, SegenError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
OUTPUT_SUFFIXES = (
    ".mask.png",
    ".color.png",
    ".overlay.png",
    ".cutout.png",
    ".cutout-soft.png",
    ".binary.png",
)  # never inputs
MANIFEST_NAME = "segen-manifest.jsonl"  # manifest.MANIFEST_NAME, here to keep imports light


@dataclass(frozen=True)
class Source:
    """An input image: its path and its path relative to the input root (mirrored under --out)."""

    path: Path
    rel: Path
    error: str = ""  # set when the input is known to be unusable before decoding


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
