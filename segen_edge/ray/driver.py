"""The public calls of the Ray engine, run on the driver: connect, plan a run (prepare,
segment_dataset) and take its results (iter_segment_ray)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray  # the real Ray: this package's own name never shadows it (absolute imports)
import ray.data

from ..errors import BadInputError
from ..files import Source
from ..images import DEFAULT_MAX_PIXELS
from ..jobs import MAX_BATCH, ImageResult, SaveOptions, run_record_for
from ..loading import Source as ModelSource
from ..plan import OutputPlan, Planned
from ..segment import PROB_KINDS, RunSettings, Segmenter
from .actors import _NO_JOB, ModelShipment, SegmentActor, _ActorJob, open_segmenter, segment_rows
from .listing import (
    BLOCK_ROWS,
    FileSystems,
    _input_schema,
    _listing_blocks,
    _plan_row,
    _put_listing,
    _settled,
    plan_inputs,
)
from .summary import SUMMARY_NAME, SummaryWriter, _settings_json

# -- the public calls ------------------------------------------------------------------------


def connect(address: str | None = None, **init_options: Any) -> bool:
    """Join (or start) Ray unless it is running in this process: None starts a local
    instance, "auto" joins the cluster on this machine, "ray://HOST:10001" goes through Ray
    Client. True when this call started the connection (so the caller shuts it down)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    options.update(init_options)
    # Ray's own INFO and notice lines are not the user's results: errors only
    for name in ("ray", "ray.data", "ray._private"):
        logging.getLogger(name).setLevel(max(logging.ERROR, logging.getLogger(name).level))
    if address is None:  # a private local instance: no token dance to announce
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BadInputError(
            f"--address {address or '(local)'}: cannot connect to Ray ({exc}); start a cluster with "
            "'ray start --head' and pass --address auto, or ray://HOST:10001"
        ) from None
    return True


@dataclass
class RayRun:
    """A planned Ray run: the lazy Dataset of result rows, and what made it."""

    dataset: ray.data.Dataset
    plan: OutputPlan
    segmenter: Segmenter
    run: RunSettings
    record: dict[str, Any]  # the manifest's run line


def prepare(
    model: Segmenter | ModelSource | None,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    alpha: float = 0.5,
    keep: Sequence[str] = (),
    recursive: bool = False,
    overwrite: bool = False,
    settings: RunSettings | None = None,
    batch_size: int = 8,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    gpus_per_actor: float = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stop: threading.Event | None = None,
    load_options: Mapping[str, Any] | None = None,
    plan: OutputPlan | None = None,
    todo_only: bool = False,
) -> RayRun:
    """segment_dataset, with the plan and model it used (see there). `todo_only`: the
    Dataset holds only the inputs an actor must run (the plan settled the others)."""
    if not ray.is_initialized():
        raise BadInputError("Ray is not running in this process; call segen_edge.ray.connect() first")
    batch_size = _checked_int("--batch-size", batch_size, 1, MAX_BATCH)
    cpus_per_actor = _checked_int("--cpus-per-actor", cpus_per_actor, 1, 1024)
    if actors is not None:
        actors = _checked_int("--actors", actors, 1, 100_000)
    if plan is None:  # the CLI plans with plan_inputs before it opens the model
        plan = plan_inputs(inputs, out_dir, save=tuple(save), recursive=recursive)
    segmenter = open_segmenter(model, load_options or {})
    options = SaveOptions(tuple(save), alpha, tuple(keep)).checked(segmenter.class_names)
    if plan.kinds != options.kinds:
        raise BadInputError(f"plan made for --save {','.join(plan.kinds)}, not {','.join(options.kinds)}")
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    if PROB_KINDS & set(options.kinds) and not run.probabilities:
        run = dataclasses.replace(run, probabilities=True)
    record = run_record_for(segmenter, run, options)
    plan.resolve(record, overwrite)
    if plan.manifest is not None and any(isinstance(e, Planned) and not e.skip for e in plan.entries):
        plan.manifest.start(record)  # the run line, before any actor appends
        plan.manifest.close()
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    filesystems = FileSystems()
    refs = _put_listing(_listing_blocks(plan, BLOCK_ROWS, stop, todo_only, filesystems), actors, batch_size)
    device = (load_options or {}).get("device")
    shipment = ModelShipment.of(segmenter, None if device in (None, "auto") else str(device))
    job = _ActorJob(
        run,
        options,
        max_pixels,
        cpus_per_actor,
        os.path.abspath(plan.out_dir),
        record["key"] if plan.manifest is not None else None,
        tuple(filesystems.items),
    )
    source = ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(_input_schema().empty_table())
    dataset = source.map_batches(
        SegmentActor,
        fn_constructor_kwargs={"shipment": shipment, "job": job},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    return RayRun(dataset, plan, segmenter, run, record)


def segment_dataset(
    model: Segmenter | ModelSource | None,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of per-image result rows (see result_schema); iterating it (or
    writing it) segments the inputs into `out_dir`, a local or shared folder (or a file://
    URI) that every node can write. Inputs are local paths, folders and globs, or URIs of
    any pyarrow file system (s3://, gs://, file://; see listing.list_uri), read in the
    actors through that file system.

    `model` is a loaded Segmenter or what load_segmenter takes (a bundled name, a path or
    bytes; `load_options` are its keywords: device, precision, overrides). Options as
    iter_segment_ray: save, alpha, keep, recursive, overwrite, settings, batch_size,
    actors, cpus_per_actor (also each actor's onnxruntime intra-op threads),
    gpus_per_actor, max_pixels, stop, load_options, plan. The inputs are listed and planned
    here, on the driver, before this returns (a PlanError for a run that would lose data);
    Ray must be running (see connect). Rows arrive in completion order.

    >>> ds = segment_dataset("unet-pets", ["photos/"], "masks", actors=4)
    >>> ds.filter(lambda r: r["status"] == "failed").take_all()
    """
    return prepare(model, inputs, out_dir, **options).dataset


def iter_segment_ray(
    model: Segmenter | ModelSource | None,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    summary: str | os.PathLike[str] | None = None,
    init_options: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> Iterator[ImageResult]:
    """The Ray engine of `segen-edge segment`: an ImageResult per input (statuses, errors
    and outputs as jobs.iter_segment_files gives them), in completion order.

    Connects to `address` (see connect; a Ray started here is shut down at the end), plans
    the run (before this returns: a PlanError as the local job raises), then segments
    lazily as results are taken, and writes the run's summary as they arrive: `summary`,
    or `<out_dir>/segen-ray-summary.jsonl` (a .parquet name: Parquet), moved into place at
    the end, also after a stop. When `stop` is set, no new result is taken and the run
    ends; outputs already written are whole (atomic writes) and a re-run skips them.
    Options as segment_dataset.
    """
    started = connect(address, **dict(init_options or {}))
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        planned = prepare(model, inputs, out_dir, stop=stop, todo_only=True, **options)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    return _results(planned, summary, stop, started)


def _results(
    planned: RayRun, summary: str | os.PathLike[str] | None, stop: threading.Event | None, started: bool
) -> Iterator[ImageResult]:
    try:
        if stop is not None and stop.is_set():
            return
        plan = planned.plan
        target = summary
        if target is None and not plan.single_file:
            target = plan.out_dir / SUMMARY_NAME
        described = {
            "model": planned.record["model"].get("name", ""),
            "settings": _settings_json(planned.run),
        }
        with contextlib.ExitStack() as stack:
            writer = None
            if target is not None:
                writer = stack.enter_context(SummaryWriter(target, planned.segmenter.class_names, described))
            for entry in plan.entries:  # skipped and failed inputs: settled by the plan, here
                if _settled(entry):
                    row = segment_rows(planned.segmenter, [_plan_row(entry, plan.out_dir)], _NO_JOB, None)[0]
                    if writer is not None:
                        writer.add(row)
                    yield to_image_result(row)
            if not any(not _settled(e) for e in plan.entries):
                return  # nothing to run: no actor is started
            rows = planned.dataset.iter_rows()
            try:
                for row in rows:
                    if writer is not None:
                        writer.add(row)
                    yield to_image_result(row)
                    if stop is not None and stop.is_set():
                        return
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
    finally:
        if started:
            ray.shutdown()


def to_image_result(row: Mapping[str, Any]) -> ImageResult:
    """A result row as the local job's ImageResult."""
    size = (int(row["height"]), int(row["width"])) if row.get("height") is not None else None
    fractions = row.get("class_fractions")
    return ImageResult(
        Source(Path(row["input"]), Path(row["rel"])),
        str(row["status"]),
        outputs=[Path(o) for o in row.get("outputs") or []],
        size=size,
        fractions=dict(fractions) if fractions is not None else None,
        error=row.get("error") or "",
        note=row.get("note") or "",
        written=[Path(o) for o in row.get("written") or []],
    )


def _checked_int(flag: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputError(f"{flag} {value}: expected a whole number from {low} to {high}")
    return value
