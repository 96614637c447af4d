"""The batch jobs: files in, files out, one result per input, never one bad file stopping a run.

`segment_files` decodes, segments and writes a stream of images in *lanes* (see
pipeline.py): each lane takes a whole batch through decode -> model -> render -> atomic
writes, so while one lane runs the model another decodes or writes. `generate_files` does
the same for generated images. The CLI is a thin layer over both; Python users call them
directly and get an `ImageResult` / `GeneratedFile` per input, in input order. The
generate job lives in generate_job.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .files import Source, WriteError
from .generate import check_batch_size
from .images import DEFAULT_MAX_PIXELS, Decoded, load_image
from .manifest import input_stat, model_digest, rel_of, run_record
from .pipeline import lanes_for, ordered_map
from .plan import OutputPlan, Planned
from .segment import KEEP_KINDS, PROB_KINDS, SAVE_KINDS, RunSettings, Segmentation, Segmenter

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
    written: list[Path] = field(default_factory=list)  # outputs this run wrote (ok: the new kinds)

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def name(self) -> str:
        """The input as the user named it: its URI for an object-store input, else its path."""
        return getattr(self.source, "uri", None) or os.fsdecode(self.source.path)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": self.name, "status": self.status}
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
        needs_keep = [k for k in self.kinds if k in KEEP_KINDS]
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


def plan_segment_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    recursive: bool = False,
    reserved: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> OutputPlan:
    """Every input and output of a segment run, checked before the model is opened (see
    plan.py); pass it to iter_segment_files as `plan=`. `total` is the number of inputs."""
    return OutputPlan.build(inputs, out_dir, tuple(save), recursive=recursive, reserved=reserved)


def run_record_for(segmenter: Segmenter, run: RunSettings, save: SaveOptions) -> dict[str, Any]:
    """The manifest's `run` line: the model file's digest and the settings that shape outputs."""
    info = {k: v for k, v in segmenter.info.to_dict().items() if k not in ("card", "precision")}
    info_digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model = {
        "name": segmenter.name,
        "file": os.fsdecode(segmenter.path.name),
        "sha256": model_digest(segmenter.path),
    }
    settings = {
        "info": info_digest,
        "mode": run.mode,
        "overlap": run.overlap,
        "blend": run.blend,
        "keep_aspect": run.keep_aspect,
        "alpha": save.alpha,
        "keep": list(save.keep),
    }
    return run_record(model, settings)


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
    plan: OutputPlan | None = None,
) -> Iterator[ImageResult]:
    """Segment inputs, yielding one ImageResult per input, in input order.

    Before anything is written (and before this returns), every input and output is planned
    (plan.py) and checked against the folder's manifest (manifest.py): a run that would
    write onto an input, outside `out_dir`, onto another input's output, or over outputs
    made by another model, settings or input version (without `overwrite`) raises
    PlanError. Then inputs are grouped into batches of `batch_size` images; `lanes`
    threads each take a whole batch: decode, run, render, write atomically (only the kinds
    not already up to date), record in the manifest. At most `lanes + 1` batches are in
    memory. When `stop` is set, the batches in progress are finished and written, and
    nothing new is started.
    """
    save_options = SaveOptions(tuple(save), alpha, tuple(keep)).checked(segmenter.class_names)
    batch_size = check_batch_size(batch_size, MAX_BATCH)
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    if PROB_KINDS & set(save_options.kinds) and not run.probabilities:
        run = RunSettings(run.mode, run.overlap, run.blend, run.batch_size, run.keep_aspect, True)
    if plan is None:
        plan = plan_segment_files(inputs, out_dir, save=save_options.kinds, recursive=recursive)
    elif plan.kinds != save_options.kinds:
        raise BadInputError(
            f"plan made for --save {','.join(plan.kinds)}, not {','.join(save_options.kinds)}"
        )
    record = run_record_for(segmenter, run, save_options)
    plan.resolve(record, overwrite)
    lanes = lanes or lanes_for(segmenter.provider, None)
    writer = _Writer(plan, record, save_options)
    return _iterate(segmenter, plan, run, writer, batch_size, lanes, max_pixels, stop)


def _iterate(
    segmenter: Segmenter,
    plan: OutputPlan,
    run: RunSettings,
    writer: _Writer,
    batch_size: int,
    lanes: int,
    max_pixels: int,
    stop: threading.Event | None,
) -> Iterator[ImageResult]:
    window = batch_size * 4  # finished inputs gathered before they are passed on

    def jobs() -> Iterator[Planned | ImageResult]:
        for entry in plan.entries:
            yield entry if isinstance(entry, Planned) else ImageResult(entry, "failed", error=entry.error)

    def groups() -> Iterator[list[Planned | ImageResult]]:
        """Input-ordered groups of `batch_size` images to run; skipped and failed inputs
        ride along (a long run of them makes a group of its own)."""
        group: list[Planned | ImageResult] = []
        images = 0
        for item in jobs():
            if stop and stop.is_set():
                return
            group.append(item)
            images += isinstance(item, Planned) and not item.skip
            if images == batch_size or (not images and len(group) >= window):
                yield group
                group, images = [], 0
        if group and not (stop and stop.is_set()):
            yield group

    def work(group: list[Planned | ImageResult]) -> list[ImageResult]:
        with np.errstate(all="ignore"):  # NaN/inf model outputs: their masks, not warnings
            return _run_group(segmenter, group, run, writer, max_pixels)

    try:
        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-lane") as pool:
            for results in ordered_map(work, groups(), pool, lanes + 1):
                yield from results
    finally:
        writer.close()


class _Writer:
    """Writes one input's outputs (only the kinds to do) and records them in the manifest."""

    def __init__(self, plan: OutputPlan, run: dict[str, Any], save: SaveOptions) -> None:
        self.plan, self.run, self.save = plan, run, save
        self.manifest = plan.manifest
        self._started = False
        self._lock = threading.Lock()

    def _line(self, entry: Planned, state: str, kinds: Sequence[str], **more: Any) -> None:
        if self.manifest is None:
            return
        with self._lock:
            if not self._started:
                self.manifest.start(self.run)
                self._started = True
        out = self.plan.out_dir
        self.manifest.append(
            {
                "type": state,
                "input": entry.key,
                "base": rel_of(out, entry.base),
                "outputs": {k: rel_of(out, entry.targets[k]) for k in kinds},
                "key": self.run["key"],
                **more,
            }
        )

    def write(self, entry: Planned, decoded: Decoded, result: Segmentation) -> ImageResult:
        kinds = entry.todo
        path = entry.base
        try:
            self._line(entry, "claim", kinds)
            for kind in kinds:
                path = entry.targets[kind]
                options = {"alpha": self.save.alpha, "keep": self.save.keep} if kind != "prob" else {}
                result.save(path, kind, **options)
            fractions = result.fractions
            self._line(
                entry,
                "done",
                kinds,
                input_stat=input_stat(entry.source.path),
                size_hw=list(decoded.size),
                class_fractions=fractions,
            )
        except WriteError as exc:
            return ImageResult(entry.source, "failed", error=str(exc))
        except OSError as exc:
            return ImageResult(entry.source, "failed", error=f"{path}: cannot write ({exc.strerror or exc})")
        except MemoryError:
            return _failed(entry, "its outputs do not fit in memory; lower --max-pixels")
        return ImageResult(
            entry.source,
            "ok",
            outputs=list(entry.targets.values()),
            size=decoded.size,
            fractions=fractions,
            note=decoded.note,
            written=[entry.targets[k] for k in kinds],
        )

    def close(self) -> None:
        if self.manifest is not None:
            self.manifest.close()


def _run_group(
    segmenter: Segmenter,
    group: list[Planned | ImageResult],
    run: RunSettings,
    writer: _Writer,
    max_pixels: int,
) -> list[ImageResult]:
    """One lane's work: decode, run, write; one result per input of the group, in order."""
    out: list[ImageResult | tuple[Planned, Decoded]] = []
    for item in group:
        if isinstance(item, ImageResult):
            out.append(item)
        elif item.skip:  # its outputs exist and are up to date
            out.append(_skipped(item))
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
        item if isinstance(item, ImageResult) else writer.write(item[0], item[1], next(segmentations))
        for item in out
    ]


def _failed(entry: Planned, why: str) -> ImageResult:
    return ImageResult(entry.source, "failed", error=f"{entry.source.path}: {why}")


def _skipped(entry: Planned) -> ImageResult:
    """An input whose outputs exist and are up to date; its size and fractions come from
    the manifest (never from reading a possibly huge mask back)."""
    record = entry.record
    size = record.size_hw if record is not None else None
    fractions = record.class_fractions if record is not None else None
    return ImageResult(
        entry.source, "skipped", outputs=list(entry.targets.values()), size=size, fractions=fractions
    )
