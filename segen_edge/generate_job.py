"""The generate job: n generated images into a folder as NAME-sSEED-INDEX.png, in lanes
(see pipeline.py), one GeneratedFile per image in order; names that hold a folder or a
special file refused before any work. The segment job is in jobs.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import WriteError, save_image
from .generate import Generator, check_batch_size, check_count, check_seed, fresh_seed
from .jobs import MAX_BATCH
from .pipeline import lanes_for, ordered_map
from .plan import PlanError


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    written: bool  # False: the file existed and was kept (no overwrite)
    image: np.ndarray


def generate_files(
    generator: Generator,
    n: int,
    out_dir: str | os.PathLike[str],
    *,
    seed: int | None = None,
    name: str | None = None,
    code: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    lanes: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[GeneratedFile], None] | None = None,
) -> Iterator[GeneratedFile]:
    """Generate n images into `out_dir` as NAME-sSEED-INDEX.png (NAME-cCODE-sSEED-INDEX.png
    with a `code`), in order, lazily. Arguments are checked, and output names that hold a
    folder or a special file refused (PlanError), when this is called, before any work.

    Each of `lanes` threads takes a whole batch: runs the model and writes its PNGs
    atomically. Existing files are kept unless `overwrite`; a folder where a file goes is
    a WriteError, never taken as done. When `stop` is set, the batches in flight are
    finished and yielded.

    >>> files = list(segen_edge.generate_files(gen, 16, "out", seed=0))
    """
    n = check_count(n)
    seed = check_seed(seed)
    seed = fresh_seed() if seed is None else seed
    batch_size = check_batch_size(batch_size, MAX_BATCH)
    generator.check_code(code)
    out = Path(out_dir)
    stem = name or generator.name
    prefix = f"{stem}-s{seed}" if code is None else f"{stem}-c{code}-s{seed}"
    check_generate_outputs(out, prefix, n)
    return _generate(generator, n, out, prefix, seed, code, batch_size, overwrite, lanes, stop, progress)


def generated_path(out_dir: Path, prefix: str, index: int) -> Path:
    return out_dir / f"{prefix}-{index:05d}.png"


def check_generate_outputs(out_dir: Path, prefix: str, n: int) -> None:
    """Refuse, before any work, a run whose output names hold folders or special files
    (one listing of the folder, whatever n is)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"{out_dir}: is a file, not a folder; pick another --out")
    try:
        entries = list(os.scandir(out_dir)) if out_dir.is_dir() else []
    except OSError as exc:
        raise PlanError(
            f"{out_dir}: cannot list the folder ({exc.strerror or exc}); check its permissions"
        ) from None
    blocked = []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix + "-") and name.endswith(".png")):
            continue
        index = name[len(prefix) + 1 : -4]
        if not (
            index.isdigit() and int(index) < n and name == generated_path(out_dir, prefix, int(index)).name
        ):
            continue
        try:
            regular = entry.is_file(follow_symlinks=True)
        except OSError:
            regular = False
        if not regular:
            blocked.append(Path(entry.path))
    if blocked:
        blocked.sort()
        more = f" and {len(blocked) - 1} more" if len(blocked) > 1 else ""
        raise PlanError(
            f"{blocked[0]}{more}: a folder or special file is where a generated image goes; "
            "move it or pick another --out"
        )


def _generate(
    generator: Generator,
    n: int,
    out: Path,
    prefix: str,
    seed: int,
    code: int | None,
    batch_size: int,
    overwrite: bool,
    lanes: int | None,
    stop: threading.Event | None,
    progress: Callable[[GeneratedFile], None] | None,
) -> Iterator[GeneratedFile]:

    def make(item: tuple[int, np.ndarray]) -> list[GeneratedFile]:
        start, latents = item
        files = []
        with np.errstate(all="ignore"):  # NaN/inf outputs: their pixels, not warnings
            images = generator.decode(latents)
        for i, image in enumerate(images, start=start):
            path = generated_path(out, prefix, i)
            if path.is_dir() or (path.exists() and not path.is_file()):
                raise WriteError(
                    f"{path}: cannot write: a folder or special file is in the way; "
                    "move it or pick another --out"
                )
            keep = not overwrite and path.is_file()
            if not keep:
                save_image(path, image)
            files.append(GeneratedFile(path, not keep, image))
        return files

    lanes = lanes or lanes_for(generator.provider, None)
    with ThreadPoolExecutor(lanes, thread_name_prefix="segen-lane") as pool:
        batches = generator.latents(n, seed, batch_size, stop, code)
        for files in ordered_map(make, batches, pool, lanes + 1):
            for file in files:
                if progress is not None:
                    progress(file)
                yield file
