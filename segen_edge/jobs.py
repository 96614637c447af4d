"""The batch jobs: files in, files out, one result per input, never one bad file stopping a run.

`segment_files` decodes, segments and writes a stream of images in *lanes* (see
pipeline.py): each lane takes a whole batch through decode -> model -> render -> atomic
writes, so while one lane runs the model another decodes or writes. `generate_files` does
the same for generated images. The CLI is a thin layer over both; Python users call them
directly and get an `ImageResult` / `GeneratedFile` per input, in input order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import BadInputError
from .generate import Generator, check_batch_size, check_count, check_seed, fresh_seed
from .images import DEFAULT_MAX_PIXELS, Decoded, Source, WriteError, find_images, load_image, save_image
from .pipeline import lanes_for, ordered_map
from .plan import OutputPlan
from .segment import SAVE_KINDS, RunSettings, Segmentation, Segmenter

MAX_BATCH = 1024


@dataclass
class ImageResult:
    """What became of one input image: ok, skipped (outputs exist) or failed."""

    source: Source
    status: str  # ok | skipped | failed
    outputs: list[Path] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (height, width) of the input
    fractions: dict[str, float] | None = None  # class name -> fraction of pixels
    error: str = ""
    note: str = ""

    @property
    def path(self) -> Path:
        return self.source.path

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": os.fsdecode(self.source.path), "status": self.status}
        if self.outputs:
            entry["outputs"] = [os.fsdecode(p) for p in self.outputs]
        if self.size:
            entry["size_hw"] = list(self.size)
        if self.fractions is not None:
            entry["class_fractions"] = self.fractions
        if self.error:
            entry["error"] = self.error
        if self.note:
            entry["note"] = self.note
        return entry


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    written: bool  # False: the file existed and was kept (no overwrite)
    image: np.ndarray


@dataclass(frozen=True)
class SaveOptions:
    """What to write per input: kinds (SAVE_KINDS), the overlay's alpha, the kept classes."""

    kinds: tuple[str, ...] = ("mask",)
    alpha: float = 0.5
    keep: tuple[str, ...] = ()

    def checked(self, class_names: Sequence[str]) -> SaveOptions:
        unknown = [k for k in self.kinds if k not in SAVE_KINDS]
        if unknown or not self.kinds:
            raise BadInputError(
                f"--save {','.join(unknown) or 'nothing'}: expected a comma-separated subset of "
                + ",".join(SAVE_KINDS)
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise BadInputError(f"--alpha {self.alpha}: expected a number from 0 to 1, e.g. 0.5")
        needs_keep = [k for k in self.kinds if k in ("cutout", "binary")]
        if needs_keep and not self.keep:
            raise BadInputError(
                f"--save {needs_keep[0]} needs --keep CLASS (one of {', '.join(class_names)})"
            )
        bad = [k for k in self.keep if k not in class_names]
        if bad:
            raise BadInputError(
                f"--keep {bad[0]}: not a class of this model; pick from {', '.join(class_names)}"
            )
        return self


@dataclass
class JobReport:
    """Every input's result, and the counts."""

    results: list[ImageResult]

    @property
    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        for r in self.results:
            counts[r.status] += 1
        return counts


def segment_files(
    segmenter: Segmenter,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    progress: Callable[[ImageResult], None] | None = None,
    **options: Any,
) -> JobReport:
    """Segment files, folders or globs into `out_dir`; a result per input (none raises for a
    bad image). Options as iter_segment_files.

    >>> report = segen_edge.segment_files(seg, ["photos/"], "masks", save=["mask", "overlay"])
    >>> report.counts
    {'ok': 12, 'skipped': 0, 'failed': 1}
    """
    results = []
    for result in iter_segment_files(segmenter, inputs, out_dir, save=save, **options):
        results.append(result)
        if progress is not None:
            progress(result)
    return JobReport(results)


def iter_segment_files(
    segmenter: Segmenter,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    alpha: float = 0.5,
    keep: Sequence[str] = (),
    recursive: bool = False,
    overwrite: bool = False,
    batch_size: int = 8,
    lanes: int | None = None,
    settings: RunSettings | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stop: threading.Event | None = None,
) -> Iterator[ImageResult]:
    """Lazily segment inputs, yielding one ImageResult per input, in input order.

    Inputs are grouped into batches of `batch_size` images (names planned, finished ones
    skipped); `lanes` threads each take a whole batch: decode, run, render, write
    atomically. At most `lanes + 1` batches are in memory. When `stop` is set, the batches
    in progress are finished and written, and nothing new is started.
    """
    save_options = SaveOptions(tuple(save), alpha, tuple(keep)).checked(segmenter.class_names)
    batch_size = check_batch_size(batch_size, MAX_BATCH)
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    if "prob" in save_options.kinds and not run.probabilities:
        run = RunSettings(run.mode, run.overlap, run.blend, run.batch_size, run.keep_aspect, True)
    plan = OutputPlan(Path(out_dir), save_options.kinds, [os.fspath(i) for i in inputs])
    lanes = lanes or lanes_for(segmenter.provider, None)
    sources = find_images([os.fspath(i) for i in inputs], recursive)
    window = batch_size * 4  # finished inputs gathered before they are passed on

    def jobs() -> Iterator[_Job | ImageResult]:
        for src in sources:
            if src.error:
                yield ImageResult(src, "failed", error=src.error)
                continue
            targets = plan.targets(src)  # in input order, so names are stable
            done = not overwrite and all(p.is_file() for p in targets.values())
            yield _Job(src, targets, skip=done)

    def groups() -> Iterator[list[_Job | ImageResult]]:
        """Input-ordered groups of `batch_size` images to run; skipped and failed inputs
        ride along (a long run of them makes a group of its own)."""
        group: list[_Job | ImageResult] = []
        images = 0
        for item in jobs():
            if stop and stop.is_set():
                return
            group.append(item)
            images += isinstance(item, _Job) and not item.skip
            if images == batch_size or (not images and len(group) >= window):
                yield group
                group, images = [], 0
        if group and not (stop and stop.is_set()):
            yield group

    def work(group: list[_Job | ImageResult]) -> list[ImageResult]:
        return _run_group(segmenter, group, run, save_options, max_pixels)

    with ThreadPoolExecutor(lanes, thread_name_prefix="segen-lane") as pool:
        for results in ordered_map(work, groups(), pool, lanes + 1):
            yield from results


@dataclass
class _Job:
    source: Source
    targets: dict[str, Path]
    skip: bool = False  # outputs exist and no overwrite: report them, run nothing


def _run_group(
    segmenter: Segmenter,
    group: list[_Job | ImageResult],
    run: RunSettings,
    save: SaveOptions,
    max_pixels: int,
) -> list[ImageResult]:
    """One lane's work: decode, run, write; one result per input of the group, in order."""
    out: list[ImageResult | tuple[_Job, Decoded]] = []
    for item in group:
        if isinstance(item, ImageResult):
            out.append(item)
        elif item.skip:  # its outputs exist: reading the saved mask's fractions is lane work
            out.append(_skipped(segmenter, item))
        else:
            try:
                out.append((item, load_image(item.source.path, segmenter.info.channels, max_pixels)))
            except BadInputError as exc:
                out.append(ImageResult(item.source, "failed", error=str(exc)))
    decoded = [item for item in out if isinstance(item, tuple)]
    if not decoded:
        return [item for item in out if isinstance(item, ImageResult)]
    try:
        segmentations = iter(segmenter.segment_arrays([d.image_u8 for _, d in decoded], run))
    except MemoryError:
        return [
            item
            if isinstance(item, ImageResult)
            else _failed(item[0], "does not fit in memory; lower --max-pixels")
            for item in out
        ]
    return [
        item if isinstance(item, ImageResult) else _write(item[0], item[1], next(segmentations), save)
        for item in out
    ]


def _failed(job: _Job, why: str) -> ImageResult:
    return ImageResult(job.source, "failed", error=f"{job.source.path}: {why}")


def _write(job: _Job, decoded: Decoded, result: Segmentation, save: SaveOptions) -> ImageResult:
    try:
        for kind, path in job.targets.items():
            result.save(path, kind, **({"alpha": save.alpha, "keep": save.keep} if kind != "prob" else {}))
    except WriteError as exc:
        return ImageResult(job.source, "failed", error=str(exc))
    except OSError as exc:
        return ImageResult(job.source, "failed", error=f"{path}: cannot write ({exc.strerror or exc})")
    except MemoryError:
        return _failed(job, "its outputs do not fit in memory; lower --max-pixels")
    return ImageResult(
        job.source,
        "ok",
        outputs=list(job.targets.values()),
        size=decoded.size,
        fractions=result.fractions,
        note=decoded.note,
    )


def _skipped(segmenter: Segmenter, job: _Job) -> ImageResult:
    """An input whose outputs exist already; its fractions come from the saved mask when
    that is small enough to read back."""
    fractions = None
    mask = job.targets.get("mask")
    if mask is not None:
        try:
            with Image.open(mask) as img:
                if img.width * img.height <= DEFAULT_MAX_PIXELS:
                    ids = np.asarray(img)
                    if ids.ndim == 2 and int(ids.max(initial=0)) < len(segmenter.class_names):
                        counts = np.bincount(ids.ravel(), minlength=len(segmenter.class_names))
                        total = max(int(ids.size), 1)
                        fractions = {
                            n: round(float(counts[i]) / total, 6) for i, n in enumerate(segmenter.class_names)
                        }
        except (OSError, ValueError, MemoryError, Image.DecompressionBombError):
            fractions = None
    return ImageResult(job.source, "skipped", outputs=list(job.targets.values()), fractions=fractions)


# -- generate ------------------------------------------------------------------------------


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
    with a `code`), in order, lazily.

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

    def make(item: tuple[int, np.ndarray]) -> list[GeneratedFile]:
        start, latents = item
        files = []
        for i, image in enumerate(generator.decode(latents), start=start):
            path = out / f"{prefix}-{i:05d}.png"
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


def find_inputs(inputs: Iterable[str | os.PathLike[str]], recursive: bool = False) -> Iterator[Source]:
    """The images that `segment_files` would process, lazily, in order."""
    return find_images([os.fspath(i) for i in inputs], recursive)
