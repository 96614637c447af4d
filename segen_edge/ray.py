"""The segment job on a Ray cluster: the same outputs as the local job, over many machines.

    >>> from segen_edge.ray import segment_dataset
    >>> ds = segment_dataset("unet-pets", ["s3://bucket/photos/"], "s3://bucket/masks", actors=8)
    >>> ds.write_parquet("s3://bucket/masks-manifest")      # one row per input image

How a run goes:

- The driver lists the inputs (local paths and globs as the local job finds them; `file://`,
  `s3://`, `gs://`, ... URIs through pyarrow's file systems) and plans every output name with
  the local job's OutputPlan (mirrored tree, the same names). The listing goes into Ray's
  object store in small Arrow blocks, so the driver holds block references, not rows.
- `map_batches` sends batches of rows to a pool of actors. Each actor opens the model once
  (from its bytes, shipped once through the object store, or from the bundled file that
  travels with the package) with intra-op threads equal to its CPUs, then for each row:
  skips it when its outputs exist (unless overwrite), decodes the image (in the actor),
  runs the batch through `Segmenter.segment_arrays` (which resizes each image to the model's
  size, or tiles it, so images of different sizes share a batch) and writes the outputs
  atomically. A bad image is a failed row, never a failed job.
- Rows come back as they finish (not in input order): input, status, outputs, size, class
  fractions, error. `iter_segment_ray` turns them into `jobs.ImageResult`s and writes the
  run's manifest (JSONL, or Parquet when the name ends in .parquet).

Memory is bounded by Ray Data's streaming execution: images exist only inside the actors,
one batch at a time, and only small result rows travel back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray  # the real Ray: this module's own name never shadows it (absolute imports)
import ray.data
from PIL import Image

from . import zoo
from .errors import BadInputError, ModelError
from .graph import read_model_bytes
from .images import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    Source,
    WriteError,
    decode_image,
    find_images,
    is_image_name,
    load_image,
)
from .jobs import MAX_BATCH, ImageResult, SaveOptions
from .loading import Source as ModelSource
from .loading import load_segmenter
from .metadata import ModelInfo
from .plan import OutputPlan
from .segment import RunSettings, Segmentation, Segmenter
from .session import create_session, external_data_files

log = logging.getLogger("segen_edge")

MANIFEST_NAME = "segen-ray-manifest.jsonl"
BLOCK_ROWS = 1024  # rows per listing block in the object store
_REMOTE_ROOT = Path("/__segen_remote_out__")  # plans names for an output URI, then replaced


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


# -- file systems ----------------------------------------------------------------------------


def is_uri(text: str) -> bool:
    """A `scheme://...` URI (file://, s3://, gs://, ...), not a local path."""
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isascii() and head.isalpha() and len(head) > 1


def _file_uri_path(text: str) -> str | None:
    """The local path of a file:// URI (through pyarrow), else None."""
    if not text.lower().startswith("file://"):
        return None
    _, path = pafs.FileSystem.from_uri(text)
    return str(path)


_FILESYSTEMS: dict[str, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a URI; one file system per scheme and host, per process."""
    scheme, _, rest = uri.partition("://")
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise BadInputError(f"{uri}: pyarrow cannot open this URI ({exc}); check the scheme") from None
    with _FS_LOCK:
        fs = _FILESYSTEMS.setdefault(key, fs)
    return fs, path


class _UriPath(PurePosixPath):
    """An input URI held where an ImageResult expects a path: str() and os.fspath() give the URI."""

    _uri: str

    def __new__(cls, uri: str) -> _UriPath:
        self = super().__new__(cls, uri.partition("://")[2])
        self._uri = uri
        return self

    def __str__(self) -> str:
        return self._uri

    def __fspath__(self) -> str:
        return self._uri


def _remote_sources(uri: str, recursive: bool) -> Iterator[Source]:
    """The images under a URI (a file, or a folder prefix), sorted, as Sources whose `rel`
    mirrors the tree under it."""
    fs, path = resolve_uri(uri)
    info = fs.get_file_info(path)
    base = uri.rstrip("/")
    if info.type == pafs.FileType.File:
        yield Source(cast(Path, _UriPath(uri)), Path(PurePosixPath(path).name))
        return
    if info.type != pafs.FileType.Directory:
        raise BadInputError(f"{uri}: no such file or folder")
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    root = path.rstrip("/")
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(entry.path[len(root) :].lstrip("/"))
        if is_image_name(Path(rel)):
            yield Source(cast(Path, _UriPath(f"{base}/{rel}")), Path(rel))


def list_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = False) -> Iterator[Source]:
    """Every input image, lazily: local paths, folders and globs as the local job finds
    them, file:// URIs as the local paths they name, other URIs through pyarrow."""
    local: list[str] = []
    for arg in inputs:
        text = os.fspath(arg)
        if is_uri(text) and _file_uri_path(text) is None:
            if local:
                yield from find_images(local, recursive)
                local = []
            yield from _remote_sources(text, recursive)
        else:
            local.append(_file_uri_path(text) or text)
    if local:
        yield from find_images(local, recursive)


class _Planner:
    """Output names for each input: the local job's OutputPlan, under a local folder or
    under an output URI (planned under a stand-in root, then joined to the URI)."""

    def __init__(self, out_dir: str | os.PathLike[str], kinds: Sequence[str], inputs: Sequence[str]) -> None:
        text = os.fspath(out_dir)
        local = _file_uri_path(text) if is_uri(text) else text
        self.remote = None if local is not None else text.rstrip("/")
        root = Path(local) if local is not None else _REMOTE_ROOT
        args = [_file_uri_path(i) or i for i in inputs if not (is_uri(i) and _file_uri_path(i) is None)]
        self.plan = OutputPlan(root, kinds, args)
        self.root = root

    @property
    def out_dir(self) -> str:
        return self.remote if self.remote is not None else os.fspath(self.root)

    def targets(self, src: Source) -> list[str]:
        """Output names in the order of the kinds: absolute paths, or URIs."""
        planned = self.plan.targets(src).values()
        if self.remote is None:
            return [os.path.abspath(p) for p in planned]
        return [f"{self.remote}/{p.relative_to(_REMOTE_ROOT).as_posix()}" for p in planned]


# -- the rows ----------------------------------------------------------------------------------


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            ("input", pa.string()),
            ("rel", pa.string()),
            ("targets", pa.list_(pa.string())),
            ("error", pa.string()),
        ]
    )


def result_schema(class_names: Sequence[str]) -> pa.Schema:
    """The columns of a result row: one per image."""
    return pa.schema(
        [
            ("input", pa.string()),
            ("rel", pa.string()),
            ("status", pa.string()),  # ok | skipped | failed
            ("outputs", pa.list_(pa.string())),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("class_fractions", pa.struct([(n, pa.float64()) for n in class_names])),
            ("error", pa.string()),
            ("note", pa.string()),
        ]
    )


def _listing_blocks(
    sources: Iterable[Source], planner: _Planner, rows_per_block: int, stop: threading.Event | None
) -> Iterator[pa.Table]:
    """The planned input rows in Arrow tables of `rows_per_block` rows."""
    schema = _input_schema()
    rows: list[dict[str, Any]] = []
    for src in sources:
        if stop is not None and stop.is_set():
            return
        targets = [] if src.error else planner.targets(src)
        path = os.fspath(src.path)
        rows.append(
            {
                "input": path if isinstance(src.path, _UriPath) else os.path.abspath(path),
                "rel": src.rel.as_posix(),
                "targets": targets,
                "error": src.error,
            }
        )
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
    overwrite: bool
    max_pixels: int
    threads: int


class SegmentActor:
    """Ray Data's callable class: opens the Segmenter once per actor, then segments and
    writes each batch of rows (pyarrow tables in, result tables out)."""

    def __init__(self, shipment: ModelShipment, job: _ActorJob) -> None:
        self.segmenter = shipment.open(job.threads)
        self.job = job
        self.schema = result_schema(shipment.info.class_names)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = segment_rows(self.segmenter, rows, self.job)
        return pa.Table.from_pylist(results, schema=self.schema)


def segment_rows(segmenter: Segmenter, rows: list[dict[str, Any]], job: _ActorJob) -> list[dict[str, Any]]:
    """One batch: skip what is done, decode the rest, run them in one call, write; one
    result row per input row, in order."""
    out: list[dict[str, Any] | tuple[dict[str, Any], Decoded]] = []
    kinds = job.save.kinds
    for row in rows:
        if row["error"]:
            out.append(_row(row, "failed", error=row["error"]))
        elif not job.overwrite and _all_exist(row["targets"]):
            fractions = _saved_fractions(segmenter, row["targets"], kinds)
            out.append(_row(row, "skipped", outputs=row["targets"], fractions=fractions))
        else:
            try:
                out.append((row, _decode(row["input"], segmenter.info.channels, job.max_pixels)))
            except BadInputError as exc:
                out.append(_row(row, "failed", error=str(exc)))
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
            results.append(_row(item[0], "failed", error=f"{item[0]['input']}: does not fit in memory"))
        else:
            results.append(_write(item[0], item[1], next(segmentations), kinds, job.save))
    return results


def _row(
    row: dict[str, Any],
    status: str,
    *,
    outputs: Sequence[str] = (),
    size: tuple[int, int] | None = None,
    fractions: dict[str, float] | None = None,
    error: str = "",
    note: str = "",
) -> dict[str, Any]:
    return {
        "input": row["input"],
        "rel": row["rel"],
        "status": status,
        "outputs": list(outputs),
        "height": size[0] if size else None,
        "width": size[1] if size else None,
        "class_fractions": fractions,
        "error": error,
        "note": note,
    }


def _decode(name: str, channels: int, max_pixels: int) -> Decoded:
    if not is_uri(name):
        return load_image(name, channels, max_pixels)
    fs, path = resolve_uri(name)
    try:
        with fs.open_input_file(path) as fh:
            data = fh.read()
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{name}: cannot read the file ({exc})") from None
    return decode_image(io.BytesIO(data), channels, max_pixels, name=name)


def _all_exist(targets: Sequence[str]) -> bool:
    """Every output is already a file (a folder in the way is not done)."""
    if not targets:
        return False
    if not is_uri(targets[0]):
        return all(os.path.isfile(t) for t in targets)
    fs, _ = resolve_uri(targets[0])
    infos = fs.get_file_info([resolve_uri(t)[1] for t in targets])
    return all(i.type == pafs.FileType.File for i in infos)


def _saved_fractions(
    segmenter: Segmenter, targets: Sequence[str], kinds: Sequence[str]
) -> dict[str, float] | None:
    """The class fractions of a skipped input, read back from its existing local mask."""
    if "mask" not in kinds:
        return None
    mask = targets[list(kinds).index("mask")]
    if is_uri(mask):
        return None
    names = segmenter.class_names
    try:
        with Image.open(mask) as img:
            if img.width * img.height > DEFAULT_MAX_PIXELS:
                return None
            ids = np.asarray(img)
    except (OSError, ValueError, MemoryError, Image.DecompressionBombError):
        return None
    if ids.ndim != 2 or int(ids.max(initial=0)) >= len(names):
        return None
    counts = np.bincount(ids.ravel(), minlength=len(names))
    total = max(int(ids.size), 1)
    return {n: round(float(counts[i]) / total, 6) for i, n in enumerate(names)}


def _write(
    row: dict[str, Any], decoded: Decoded, result: Segmentation, kinds: Sequence[str], save: SaveOptions
) -> dict[str, Any]:
    target = ""
    try:
        for kind, target in zip(kinds, row["targets"], strict=True):
            options = {"alpha": save.alpha, "keep": save.keep} if kind != "prob" else {}
            if is_uri(target):
                _upload(result, kind, target, options)
            else:
                result.save(target, kind, **options)
    except WriteError as exc:
        return _row(row, "failed", error=str(exc))
    except (OSError, pa.ArrowException) as exc:
        return _row(row, "failed", error=f"{target}: cannot write ({getattr(exc, 'strerror', None) or exc})")
    except MemoryError:
        return _row(row, "failed", error=f"{row['input']}: its outputs do not fit in memory")
    return _row(
        row, "ok", outputs=row["targets"], size=decoded.size, fractions=result.fractions, note=decoded.note
    )


def _upload(result: Segmentation, kind: str, uri: str, options: Mapping[str, Any]) -> None:
    """Render one output as the local job would (into a temporary file), then copy it to
    the file system in one stream: object stores publish an object whole, on close."""
    fs, path = resolve_uri(uri)
    with tempfile.TemporaryDirectory(prefix="segen-ray-") as tmp:
        local = Path(tmp) / Path(path).name
        result.save(local, kind, **options)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as fh:
            fh.write(local.read_bytes())


# -- the public calls ------------------------------------------------------------------------


def connect(address: str | None = None, **init_options: Any) -> bool:
    """Join (or start) Ray unless it is running in this process: None starts a local
    instance, "auto" joins the cluster on this machine, "ray://HOST:10001" goes through Ray
    Client. True when this call started the connection (so the caller shuts it down)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    options.update(init_options)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BadInputError(
            f"--address {address or '(local)'}: cannot connect to Ray ({exc}); start a cluster with "
            "'ray start --head' and pass --address auto, or ray://HOST:10001"
        ) from None
    return True


def segment_dataset(
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
) -> ray.data.Dataset:
    """A lazy Ray Dataset of per-image result rows (see result_schema); iterating it (or
    writing it) segments the inputs into `out_dir`, a local or shared folder or a URI.

    `model` is a loaded Segmenter or what load_segmenter takes (a bundled name, a path or
    bytes; `load_options` are its keywords: device, precision, overrides). The inputs are
    listed here, on the driver, before this returns; Ray must be running (see connect).
    Rows arrive in completion order. `actors` defaults to the cluster's CPUs divided by
    `cpus_per_actor`, which is also each actor's onnxruntime intra-op thread count.

    >>> ds = segment_dataset("unet-pets", ["photos/"], "masks", actors=4)
    >>> ds.filter(lambda r: r["status"] == "failed").take_all()
    """
    if not ray.is_initialized():
        raise BadInputError("Ray is not running in this process; call segen_edge.ray.connect() first")
    segmenter = open_segmenter(model, load_options or {})
    options = SaveOptions(tuple(save), alpha, tuple(keep)).checked(segmenter.class_names)
    run = settings.resolved(segmenter.info) if settings else segmenter.settings()
    if "prob" in options.kinds and not run.probabilities:
        run = dataclasses.replace(run, probabilities=True)
    batch_size = _checked_int("--batch-size", batch_size, 1, MAX_BATCH)
    cpus_per_actor = _checked_int("--cpus-per-actor", cpus_per_actor, 1, 1024)
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    actors = _checked_int("--actors", actors, 1, 100_000)
    names = [os.fspath(i) for i in inputs]
    planner = _Planner(out_dir, options.kinds, names)
    listing = _listing_blocks(list_inputs(names, recursive), planner, BLOCK_ROWS, stop)
    refs = _put_listing(listing, actors, batch_size)
    device = (load_options or {}).get("device")
    shipment = ModelShipment.of(segmenter, None if device in (None, "auto") else str(device))
    job = _ActorJob(run, options, overwrite, max_pixels, cpus_per_actor)
    source = ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(_input_schema().empty_table())
    return source.map_batches(
        SegmentActor,
        fn_constructor_kwargs={"shipment": shipment, "job": job},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )


def iter_segment_ray(
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
    address: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stop: threading.Event | None = None,
    load_options: Mapping[str, Any] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    init_options: Mapping[str, Any] | None = None,
) -> Iterator[ImageResult]:
    """The Ray engine of `segen-edge segment`: an ImageResult per input (statuses, errors
    and outputs as jobs.iter_segment_files gives them), in completion order.

    Connects to `address` (see connect; a Ray started here is shut down at the end), runs
    segment_dataset, and writes the manifest as results arrive: `manifest` or
    `<out_dir>/segen-ray-manifest.jsonl` (.parquet: Parquet), renamed into place at the end,
    also after a stop. When `stop` is set, no new result is taken and the run ends; the
    outputs already written are whole (atomic writes), and a re-run skips them.
    """
    started = connect(address, **dict(init_options or {}))
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        segmenter = open_segmenter(model, load_options or {})
        ds = segment_dataset(
            segmenter,
            inputs,
            out_dir,
            save=save,
            alpha=alpha,
            keep=keep,
            recursive=recursive,
            overwrite=overwrite,
            settings=settings,
            batch_size=batch_size,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            max_pixels=max_pixels,
            stop=stop,
            load_options=load_options,
        )
        if stop is not None and stop.is_set():
            return
        run = settings.resolved(segmenter.info) if settings else segmenter.settings()
        described = {"model": segmenter.info.name or str(segmenter.path), "settings": _settings_json(run)}
        target = manifest if manifest is not None else _default_manifest(out_dir)
        with ManifestWriter(target, segmenter.class_names, described) as writer:
            rows = ds.iter_rows()
            try:
                for row in rows:
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
    """A result row as the local job's ImageResult (local outputs as Paths)."""
    name = str(row["input"])
    path = cast(Path, _UriPath(name)) if is_uri(name) else Path(name)
    size = (int(row["height"]), int(row["width"])) if row.get("height") is not None else None
    fractions = row.get("class_fractions")
    return ImageResult(
        Source(path, Path(row["rel"])),
        str(row["status"]),
        outputs=[cast(Path, _UriPath(o)) if is_uri(o) else Path(o) for o in row.get("outputs") or []],
        size=size,
        fractions=dict(fractions) if fractions is not None else None,
        error=row.get("error") or "",
        note=row.get("note") or "",
    )


# -- the manifest ------------------------------------------------------------------------------


def _default_manifest(out_dir: str | os.PathLike[str]) -> str:
    text = os.fspath(out_dir)
    if is_uri(text):
        local = _file_uri_path(text)
        return (
            os.path.join(local, MANIFEST_NAME) if local is not None else f"{text.rstrip('/')}/{MANIFEST_NAME}"
        )
    return os.path.join(text, MANIFEST_NAME)


def _settings_json(run: RunSettings) -> str:
    return json.dumps(dataclasses.asdict(run), sort_keys=True)


class ManifestWriter:
    """The run's summary, one row per input: input, status, outputs, size, class fractions,
    error, note, model, settings. JSONL, or Parquet (row groups of BLOCK_ROWS) for a name
    ending in .parquet; written to a temporary file and moved into place on close, so a
    reader never sees half a manifest; a URI is uploaded whole on close."""

    def __init__(self, target: str | os.PathLike[str], class_names: Sequence[str], described: dict[str, str]):
        self.target = os.fspath(target)
        self.parquet = self.target.lower().endswith(".parquet")
        self.described = described
        self.schema = result_schema(class_names).append(pa.field("model", pa.string()))
        self.schema = self.schema.append(pa.field("settings", pa.string()))
        local = _file_uri_path(self.target) if is_uri(self.target) else self.target
        self.local = local
        folder = os.path.dirname(os.path.abspath(local)) if local is not None else None
        if folder is not None:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise WriteError(f"{folder}: cannot write the manifest ({exc.strerror or exc})") from None
        name = os.path.basename(local or self.target)
        self._tmp = tempfile.NamedTemporaryFile(prefix=f".{name}.", suffix=".part", dir=folder, delete=False)  # noqa: SIM115 (closed in close())
        self._rows: list[dict[str, Any]] = []
        self._parquet: pq.ParquetWriter | None = None
        self.count = 0

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, row: Mapping[str, Any]) -> None:
        entry = {k: row.get(k) for k in self.schema.names if k not in self.described}
        entry.update(self.described)
        self.count += 1
        if not self.parquet:
            self._tmp.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
            return
        self._rows.append(entry)
        if len(self._rows) >= BLOCK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(cast(IO[bytes], self._tmp), self.schema)
        self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows = []

    def close(self) -> None:
        if self._tmp.closed:
            return
        try:
            if self.parquet:
                self._flush()
                if self._parquet is None:
                    self._parquet = pq.ParquetWriter(cast(IO[bytes], self._tmp), self.schema)
                self._parquet.close()
            self._tmp.close()
            self._publish()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp.name)

    def _publish(self) -> None:
        if self.local is not None:
            os.replace(self._tmp.name, self.local)
            return
        fs, path = resolve_uri(self.target)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with open(self._tmp.name, "rb") as src, fs.open_output_stream(path) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A manifest's rows (JSONL or Parquet), for checks and reports."""
    text = os.fspath(path)
    if text.lower().endswith(".parquet"):
        return cast(list[dict[str, Any]], pq.read_table(text).to_pylist())
    with open(text, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _checked_int(flag: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputError(f"{flag} {value}: expected a whole number from {low} to {high}")
    return value
