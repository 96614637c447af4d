"""The segment job on a Ray cluster: the same outputs as the local job, over many machines.

    >>> from segen_edge.ray import connect, segment_dataset
    >>> connect("auto")                                       # or "ray://HOST:10001"
    >>> ds = segment_dataset("unet-pets", ["/mnt/shared/photos"], "/mnt/shared/masks", actors=8)
    >>> ds.write_parquet("/mnt/shared/masks-results")         # one row per input image

How a run goes:

- The driver lists the inputs (local paths, folders, globs and `file://` URIs, read through
  pyarrow's file systems) and plans every output with the local job's plan (plan.py): the
  same names, the mirrored tree, the same refusals before any work, the same skip and
  `--overwrite` rules from the folder's manifest (manifest.py). Skipped and failed inputs
  are settled there; the rest go into Ray's object store as small Arrow blocks.
- `map_batches` sends batches of rows to a pool of actors. Each actor opens the model once
  (from its bytes, put in the object store once, or from the bundled file that travels
  with the package) with intra-op threads equal to its CPUs, then for each batch decodes
  its images (in the actor), runs them through `Segmenter.segment_arrays` (which resizes
  each image to the model's size, or tiles it, so images of different sizes share a
  batch), writes the outputs atomically and appends claim/done lines to the folder's
  manifest (one O_APPEND write per line, so actors on many machines share it on a shared
  folder). A bad image is a failed row, never a failed job.
- Rows come back as they finish (not in input order): input, status, outputs, size, class
  fractions, error. `iter_segment_ray` turns them into `jobs.ImageResult`s and writes the
  run's summary (JSONL, or Parquet when the name ends in .parquet).

Images exist only inside the actors, one batch at a time; only small rows travel back.
The driver holds the plan (a few hundred bytes an input, as the local job does) and block
references, never images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray  # the real Ray: this module's own name never shadows it (absolute imports)
import ray.data

from . import zoo
from .errors import BadInputError, ModelError
from .graph import read_model_bytes
from .images import DEFAULT_MAX_PIXELS, Decoded, Source, WriteError, load_image
from .jobs import MAX_BATCH, ImageResult, SaveOptions, plan_segment_files, run_record_for
from .loading import Source as ModelSource
from .loading import load_segmenter
from .manifest import Manifest, input_stat, rel_of
from .metadata import ModelInfo
from .plan import OutputPlan, Planned
from .segment import RunSettings, Segmentation, Segmenter
from .session import create_session, external_data_files

log = logging.getLogger("segen_edge")

SUMMARY_NAME = "segen-ray-summary.jsonl"
BLOCK_ROWS = 1024  # rows per listing block in the object store


# -- the model, as it travels to the actors --------------------------------------------------


@dataclass(frozen=True)
class ModelShipment:
    """What an actor needs to open the driver's model: its resolved ModelInfo and either
    the name of a bundled file (present wherever segen-edge is installed), the model's
    bytes (an ObjectRef: put in the object store once, fetched once per node), or a path
    (a model with external weight files, which must be reachable at that path everywhere)."""

    info: ModelInfo
    device: str = "cpu"
    bundled: str | None = None
    data: Any = None  # ray.ObjectRef[bytes]
    path: str | None = None
    bf16: bool = False

    @classmethod
    def of(cls, segmenter: Segmenter, device: str | None = None) -> ModelShipment:
        """The shipment of a loaded Segmenter (its file is read here, on the driver)."""
        info, loaded = segmenter.info, segmenter.loaded
        device = device or loaded.provider
        path = Path(loaded.path)
        if path.parent == zoo.BUNDLED_DIR:
            return cls(info, device, bundled=path.name, bf16=loaded.bf16)
        if not path.is_file():
            raise ModelError(
                f"{segmenter.name}: a model loaded from bytes cannot be shipped to Ray actors; "
                "pass its bytes (or path, or bundled name) as the model instead"
            )
        data = read_model_bytes(path)
        if external_data_files(data):
            return cls(info, device, path=os.path.abspath(path), bf16=loaded.bf16)
        return cls(info, device, data=ray.put(data), bf16=loaded.bf16)

    def open(self, threads: int | None) -> Segmenter:
        """A Segmenter on this actor, `threads` intra-op threads per run."""
        source: Path | bytes
        if self.bundled is not None:
            source = zoo.BUNDLED_DIR / self.bundled
        elif self.path is not None:
            source = Path(self.path)
        else:
            source = self.data if isinstance(self.data, bytes) else ray.get(self.data)
        loaded = create_session(source, self.device, threads=threads, bf16=self.bf16, name=self.info.name)
        return Segmenter(loaded, self.info)


def open_segmenter(model: Segmenter | ModelSource | None, load_options: Mapping[str, Any]) -> Segmenter:
    """The driver's Segmenter: `model` itself, or load_segmenter(model, **load_options)."""
    if isinstance(model, Segmenter):
        return model
    return load_segmenter(model, **dict(load_options))


# -- paths and URIs --------------------------------------------------------------------------


def is_uri(text: str) -> bool:
    """A `scheme://...` URI (file://, s3://, gs://, ...), not a local path."""
    head, sep, _ = text.partition("://")
    scheme = len(head) > 1 and head[:1].isalpha() and all(c.isalnum() or c in "+.-" for c in head)
    return bool(sep) and head.isascii() and scheme


def local_path(text: str | os.PathLike[str], flag: str = "input") -> str:
    """A local path, or the path a file:// URI names (parsed by pyarrow). Other URIs
    (s3://, gs://) are refused: the plan and manifest need a file system they can list,
    stat and append to; mount the bucket (s3fs, gcsfuse) and pass the mount's path."""
    name = os.fspath(text)
    if not is_uri(name):
        return name
    scheme = name.partition("://")[0].lower()
    if scheme != "file":
        raise BadInputError(
            f"{name}: {scheme}:// URIs are not planned yet; mount the bucket on every node "
            "(s3fs, gcsfuse) and pass the mounted path, or a file:// URI"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(name)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise BadInputError(
            f"{name}: pyarrow cannot open this {flag} URI ({exc}); check the scheme"
        ) from None
    if not isinstance(fs, pafs.LocalFileSystem):  # pragma: no cover - file:// is always local
        raise BadInputError(f"{name}: not a local file system URI")
    return str(path)


# -- the rows ----------------------------------------------------------------------------------


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            ("input", pa.string()),  # the path as planned (the result's source.path)
            ("abs", pa.string()),  # absolute: what actors open, the manifest's key
            ("rel", pa.string()),
            ("outputs", pa.list_(pa.string())),  # every planned output, kinds in --save order
            ("todo", pa.list_(pa.string())),  # kinds this run writes
            ("base", pa.string()),  # the output stem relative to out (the manifest's base)
            ("status", pa.string()),  # "" to run; skipped | failed settled by the plan
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("fractions", pa.string()),  # JSON, for a skipped input from the manifest
            ("error", pa.string()),
        ]
    )


def result_schema(class_names: Sequence[str]) -> pa.Schema:
    """The columns of a result row: one per input image."""
    return pa.schema(
        [
            ("input", pa.string()),
            ("rel", pa.string()),
            ("status", pa.string()),  # ok | skipped | failed
            ("outputs", pa.list_(pa.string())),
            ("written", pa.list_(pa.string())),  # outputs this run wrote
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("class_fractions", pa.struct([(n, pa.float64()) for n in class_names])),
            ("error", pa.string()),
            ("note", pa.string()),
        ]
    )


def _plan_row(entry: Planned | Source, out_dir: Path) -> dict[str, Any]:
    if isinstance(entry, Source):
        path = os.fspath(entry.path)
        return _empty_row(path, entry.rel.as_posix(), status="failed", error=entry.error)
    row = _empty_row(os.fspath(entry.source.path), entry.source.rel.as_posix())
    row["outputs"] = [os.fspath(p) for p in entry.targets.values()]
    row["todo"] = list(entry.todo)
    row["base"] = rel_of(out_dir, entry.base)
    if entry.skip:
        record = entry.record
        row["status"] = "skipped"
        if record is not None and record.size_hw is not None:
            row["height"], row["width"] = record.size_hw
        if record is not None and record.class_fractions is not None:
            row["fractions"] = json.dumps(record.class_fractions)
    return row


def _empty_row(path: str, rel: str, status: str = "", error: str = "") -> dict[str, Any]:
    return {
        "input": path,
        "abs": os.path.abspath(path),
        "rel": rel,
        "outputs": [],
        "todo": [],
        "base": "",
        "status": status,
        "height": None,
        "width": None,
        "fractions": None,
        "error": error,
    }


def _settled(entry: Planned | Source) -> bool:
    """Skipped or failed by the plan: nothing for an actor to do."""
    return isinstance(entry, Source) or entry.skip


def _listing_blocks(
    plan: OutputPlan, rows_per_block: int, stop: threading.Event | None, todo_only: bool = False
) -> Iterator[pa.Table]:
    """The planned input rows in Arrow tables of `rows_per_block` rows (`todo_only`: only
    those an actor must run)."""
    schema = _input_schema()
    rows: list[dict[str, Any]] = []
    for entry in plan.entries:
        if stop is not None and stop.is_set():
            return
        if todo_only and _settled(entry):
            continue
        rows.append(_plan_row(entry, plan.out_dir))
        if len(rows) == rows_per_block:
            yield pa.Table.from_pylist(rows, schema=schema)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


def _put_listing(blocks: Iterable[pa.Table], actors: int, batch_size: int) -> list[Any]:
    """The listing in the object store, in blocks small enough that every actor gets work:
    a short listing is cut into about 8 blocks per actor, a long one stays in BLOCK_ROWS."""
    refs: list[Any] = []
    rows = 0
    for table in blocks:
        refs.append(ray.put(table))
        rows += table.num_rows
    wanted = max(batch_size, -(-rows // (8 * actors)))
    if wanted >= BLOCK_ROWS or not refs:
        return refs
    whole = pa.concat_tables([ray.get(r) for r in refs])  # under 8 * actors * BLOCK_ROWS rows
    return [ray.put(whole.slice(i, wanted)) for i in range(0, whole.num_rows, wanted)]


# -- the actors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ActorJob:
    """Everything an actor needs besides the model: how to run it and what to write."""

    run: RunSettings
    save: SaveOptions
    max_pixels: int
    threads: int
    out_dir: str  # absolute
    manifest_key: str | None  # the run line's key; None: no manifest (-o NAME.png)


_NO_JOB = _ActorJob(RunSettings(), SaveOptions(), 0, 1, "", None)  # for rows the plan settled


class _Appender(Manifest):
    """The folder's manifest, append-only: an actor writes lines and never folds them, so
    its memory stays flat however many inputs it segments."""

    def _apply(self, kind: str, record: dict[str, Any]) -> None:
        return None


class SegmentActor:
    """Ray Data's callable class: opens the Segmenter once per actor, then segments and
    writes each batch of rows (pyarrow tables in, result tables out)."""

    def __init__(self, shipment: ModelShipment, job: _ActorJob) -> None:
        self.segmenter = shipment.open(job.threads)
        self.job = job
        self.schema = result_schema(shipment.info.class_names)
        self.manifest = _Appender(Path(job.out_dir)) if job.manifest_key is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = segment_rows(self.segmenter, rows, self.job, self.manifest)
        return pa.Table.from_pylist(results, schema=self.schema)

    def __del__(self) -> None:
        manifest = getattr(self, "manifest", None)
        if manifest is not None:
            manifest.close()


def segment_rows(
    segmenter: Segmenter, rows: list[dict[str, Any]], job: _ActorJob, manifest: Manifest | None
) -> list[dict[str, Any]]:
    """One batch: rows the plan settled pass through; the rest are decoded, run in one
    call and written; one result row per input row, in order."""
    out: list[dict[str, Any] | tuple[dict[str, Any], Decoded]] = []
    for row in rows:
        if row["status"]:
            fractions = json.loads(row["fractions"]) if row["fractions"] else None
            size = (row["height"], row["width"]) if row["height"] is not None else None
            out.append(_result(row, row["status"], size=size, fractions=fractions, error=row["error"]))
            continue
        try:
            out.append((row, load_image(row["abs"], segmenter.info.channels, job.max_pixels)))
        except BadInputError as exc:
            out.append(_result(row, "failed", error=str(exc)))
    decoded = [item for item in out if isinstance(item, tuple)]
    segmentations: Iterator[Segmentation] = iter(())
    oom = False
    if decoded:
        try:
            segmentations = iter(segmenter.segment_arrays([d.image_u8 for _, d in decoded], job.run))
        except MemoryError:
            oom = True
    results = []
    for item in out:
        if isinstance(item, dict):
            results.append(item)
        elif oom:
            why = f"{item[0]['input']}: does not fit in memory; lower --max-pixels"
            results.append(_result(item[0], "failed", error=why))
        else:
            results.append(_write(item[0], item[1], next(segmentations), job, manifest))
    return results


def _result(
    row: dict[str, Any],
    status: str,
    *,
    size: tuple[int, int] | None = None,
    fractions: dict[str, float] | None = None,
    error: str = "",
    note: str = "",
    written: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "input": row["input"],
        "rel": row["rel"],
        "status": status,
        "outputs": row["outputs"] if status != "failed" else [],
        "written": list(written),
        "height": size[0] if size else None,
        "width": size[1] if size else None,
        "class_fractions": fractions,
        "error": error,
        "note": note,
    }


def _write(
    row: dict[str, Any], decoded: Decoded, result: Segmentation, job: _ActorJob, manifest: Manifest | None
) -> dict[str, Any]:
    """Write the kinds to do, between a claim line and a done line of the manifest (as the
    local job does), atomically."""
    kinds = list(job.save.kinds)
    targets = dict(zip(kinds, row["outputs"], strict=True))
    todo = list(row["todo"])
    out = Path(job.out_dir)
    path = ""

    def line(state: str, **more: Any) -> None:
        if manifest is None:
            return
        outputs = {k: rel_of(out, Path(os.path.abspath(targets[k]))) for k in todo}
        record = {"type": state, "input": row["abs"], "base": row["base"], "outputs": outputs}
        manifest.append({**record, "key": job.manifest_key, **more})

    try:
        line("claim")
        for kind in todo:
            path = os.path.abspath(targets[kind])
            options = {"alpha": job.save.alpha, "keep": job.save.keep} if kind != "prob" else {}
            result.save(path, kind, **options)
        fractions = result.fractions
        line("done", input_stat=input_stat(row["abs"]), size_hw=list(decoded.size), class_fractions=fractions)
    except WriteError as exc:
        return _result(row, "failed", error=str(exc))
    except OSError as exc:
        return _result(row, "failed", error=f"{path}: cannot write ({exc.strerror or exc})")
    except MemoryError:
        return _result(
            row, "failed", error=f"{row['input']}: its outputs do not fit in memory; lower --max-pixels"
        )
    written = [targets[k] for k in todo]
    return _result(row, "ok", size=decoded.size, fractions=fractions, note=decoded.note, written=written)


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
    names = [local_path(i) for i in inputs]
    out = local_path(out_dir, "--out")
    if plan is None:
        plan = plan_segment_files(names, out, save=tuple(save), recursive=recursive)
    segmenter = open_segmenter(model, load_options or {})
    options = SaveOptions(tuple(save), alpha, tuple(keep)).checked(segmenter.class_names)
    if plan.kinds != options.kinds:
        raise BadInputError(f"plan made for --save {','.join(plan.kinds)}, not {','.join(options.kinds)}")
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    if "prob" in options.kinds and not run.probabilities:
        run = dataclasses.replace(run, probabilities=True)
    record = run_record_for(segmenter, run, options)
    plan.resolve(record, overwrite)
    if plan.manifest is not None and any(isinstance(e, Planned) and not e.skip for e in plan.entries):
        plan.manifest.start(record)  # the run line, before any actor appends
        plan.manifest.close()
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    refs = _put_listing(_listing_blocks(plan, BLOCK_ROWS, stop, todo_only), actors, batch_size)
    device = (load_options or {}).get("device")
    shipment = ModelShipment.of(segmenter, None if device in (None, "auto") else str(device))
    job = _ActorJob(
        run,
        options,
        max_pixels,
        cpus_per_actor,
        os.path.abspath(plan.out_dir),
        record["key"] if plan.manifest is not None else None,
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
    URI) that every node can write.

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


# -- the summary -------------------------------------------------------------------------------


def _settings_json(run: RunSettings) -> str:
    return json.dumps(dataclasses.asdict(run), sort_keys=True)


class SummaryWriter:
    """The run's summary, one row per input: input, status, outputs, written, size, class
    fractions, error, note, model, settings. JSONL, or Parquet (row groups of BLOCK_ROWS)
    for a name ending in .parquet; written to a hidden temporary file beside it and moved
    into place on close, so a reader never sees half a summary."""

    def __init__(
        self, target: str | os.PathLike[str], class_names: Sequence[str], described: dict[str, str]
    ) -> None:
        self.target = Path(local_path(target, "--summary"))
        self.parquet = self.target.suffix.lower() == ".parquet"
        self.described = described
        schema = result_schema(class_names)
        self.schema = schema.append(pa.field("model", pa.string())).append(pa.field("settings", pa.string()))
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in close())
                prefix=f".{self.target.name}.", suffix=".part", dir=self.target.parent, delete=False
            )
        except OSError as exc:
            raise WriteError(f"{self.target}: cannot write the summary ({exc.strerror or exc})") from None
        self._rows: list[dict[str, Any]] = []
        self._parquet: pq.ParquetWriter | None = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, row: Mapping[str, Any]) -> None:
        entry = {k: row.get(k) for k in self.schema.names if k not in self.described}
        entry.update(self.described)
        if not self.parquet:
            self._tmp.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape"))
            return
        self._rows.append(entry)
        if len(self._rows) >= BLOCK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(cast(IO[bytes], self._tmp), self.schema)
        if self._rows:
            self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows = []

    def close(self) -> None:
        if self._tmp.closed:
            return
        try:
            if self.parquet:
                self._flush()
                assert self._parquet is not None
                self._parquet.close()
            self._tmp.close()
            os.replace(self._tmp.name, self.target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp.name)


def read_summary(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A summary's rows (JSONL or Parquet)."""
    text = os.fspath(path)
    if text.lower().endswith(".parquet"):
        return cast(list[dict[str, Any]], pq.read_table(text).to_pylist())
    with open(text, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _checked_int(flag: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputError(f"{flag} {value}: expected a whole number from {low} to {high}")
    return value
