"""The driver's listing of a Ray run: input paths and URIs (any pyarrow file system), the
planned input rows and the result rows' schema, and the Arrow blocks they travel in through
the object store."""

from __future__ import annotations

import datetime
import fnmatch
import glob
import json
import os
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray  # the real Ray: this package's own name never shadows it (absolute imports)

from ..errors import BadInputError
from ..files import OUTPUT_SUFFIXES, Source, find_images, is_image_name
from ..jobs import plan_segment_files
from ..manifest import MANIFEST_NAME, recorded_paths, rel_of
from ..plan import ListedSource, OutputPlan, Planned, source_key, source_name, uri_scheme

BLOCK_ROWS = 1024  # rows per listing block in the object store


# -- paths and URIs --------------------------------------------------------------------------

S3_OPTIONS = ("region", "endpoint_override", "scheme")  # what an s3:// URI's query may set
S3_TIMEOUTS = {"connect_timeout": 5.0, "request_timeout": 60.0}  # seconds; retries: 3 attempts
GCS_RETRY_LIMIT = datetime.timedelta(seconds=20)  # gs:// retries (e.g. no credentials): then fail


def is_uri(text: str) -> bool:
    """A `scheme://...` URI (file://, s3://, gs://, ...), not a local path."""
    return bool(uri_scheme(text))


def local_path(text: str | os.PathLike[str], flag: str = "--out") -> str:
    """A local path, or the path a file:// URI names (parsed by pyarrow): where outputs go.
    Other URIs (s3://, gs://) are refused: the plan and manifest write outputs on a file
    system they can list, stat and append to; mount the bucket (s3fs, gcsfuse) instead."""
    name = os.fspath(text)
    scheme = uri_scheme(name)
    if not scheme:
        return name
    if scheme != "file":
        raise BadInputError(
            f"{flag} {name}: outputs go to a local or shared folder, not {scheme}://; mount the bucket "
            "on every node (s3fs, gcsfuse) and pass the mounted path (inputs may be URIs)"
        )
    fs, path = open_filesystem(name, flag)
    if not isinstance(fs, pafs.LocalFileSystem):  # pragma: no cover - file:// is always local
        raise BadInputError(f"{flag} {name}: not a local file system URI")
    return str(path)


def open_filesystem(uri: str, flag: str = "input") -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system for a URI, and the path inside it.

    s3:// is built here, with short connect timeouts and 3 attempts (from_uri first asks
    S3 for the bucket's region, retrying for seconds when offline): its region comes from
    `?region=` in the URI, else AWS_REGION / AWS's config, else us-east-1; `?endpoint_override=`
    and `?scheme=` serve S3-compatible stores. gs:// gives up retrying after 20 s (from_uri's
    file system waits minutes for credentials it cannot get). Other schemes go to from_uri."""
    try:
        scheme = uri_scheme(uri)
        if scheme == "s3":
            return _s3(uri)
        if scheme in ("gs", "gcs"):
            return _gcs(uri)
        return pafs.FileSystem.from_uri(uri)
    except BadInputError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise BadInputError(
            f"{uri}: pyarrow cannot open this {flag} URI ({_line(exc)}); check the scheme"
        ) from None


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    parts = urllib.parse.urlsplit(uri)
    query = dict(urllib.parse.parse_qsl(parts.query))
    unknown = sorted(set(query) - set(S3_OPTIONS))
    if unknown:
        raise BadInputError(
            f"{uri}: unknown option {unknown[0]}; an s3:// URI may set {', '.join(S3_OPTIONS)}"
        )
    if not parts.netloc:
        raise BadInputError(f"{uri}: no bucket; expected s3://BUCKET/PATH")
    options: dict[str, Any] = {k: v for k, v in query.items() if v}
    if "region" not in options and os.environ.get("AWS_REGION"):
        options["region"] = os.environ["AWS_REGION"]
    fs = pafs.S3FileSystem(
        **options, **S3_TIMEOUTS, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    )
    path = parts.netloc + urllib.parse.unquote(parts.path)
    return fs, path.rstrip("/") or parts.netloc


def _gcs(uri: str) -> tuple[pafs.FileSystem, str]:
    parts = urllib.parse.urlsplit(uri)
    if parts.query or not parts.netloc:
        raise BadInputError(f"{uri}: expected gs://BUCKET/PATH (no options)")
    path = parts.netloc + urllib.parse.unquote(parts.path)
    return pafs.GcsFileSystem(retry_time_limit=GCS_RETRY_LIMIT), path.rstrip("/") or parts.netloc


@dataclass(frozen=True)
class UriSource(ListedSource):
    """A ListedSource on a pyarrow file system: `fs` and `fs_path` open it again (in the actors)."""

    fs: Any = None  # pafs.FileSystem (one object per input argument, shared)
    fs_path: str = ""


def list_uri(uri: str, recursive: bool = False) -> list[UriSource]:
    """The images a URI names, as find_images lists a local argument: a file (whatever its
    suffix), a folder's images (sorted; subfolders with `recursive`), or a glob in the last
    component (fnmatch: the matching files, and the images of matching folders). Each has
    its path relative to the folder listed, mirrored under --out. A URI that names nothing,
    or that cannot be listed, is a BadInputError here, before any work."""
    fs, path = open_filesystem(uri)
    prefix = uri.partition("?")[0].rstrip("/")
    local = isinstance(fs, pafs.LocalFileSystem)
    head, _, last = path.rpartition("/")
    try:
        if glob.has_magic(last):
            folder, folder_uri = head or "/", prefix.rpartition("/")[0]
            children = sorted(_children(fs, folder, False), key=lambda i: i.path)
            matches = [i for i in children if fnmatch.fnmatchcase(i.base_name, last)]
            if not matches:
                raise BadInputError(f"{uri}: the pattern matches no file; check the quotes and path")
            found: list[UriSource] = []
            for info in matches:
                if info.type == pafs.FileType.Directory:
                    found += _images(fs, info.path, folder, folder_uri, recursive, local)
                elif not info.base_name.lower().endswith(OUTPUT_SUFFIXES):
                    found.append(_listed(fs, info, folder, folder_uri, local))
            return found
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise BadInputError(f"{uri}: no such file or folder; check the URI")
        if info.type == pafs.FileType.Directory:
            return _images(fs, path, path, prefix, recursive, local)
        return [_listed(fs, info, head, prefix.rpartition("/")[0], local)]
    except BadInputError:
        raise
    except OSError as exc:
        raise BadInputError(
            f"{uri}: cannot list ({_line(exc)}); check the URI, the credentials and the network"
        ) from None


def _children(fs: pafs.FileSystem, folder: str, recursive: bool) -> list[pafs.FileInfo]:
    return list(fs.get_file_info(pafs.FileSelector(folder, recursive=recursive)))


def _images(
    fs: pafs.FileSystem, folder: str, root: str, root_uri: str, recursive: bool, local: bool
) -> list[UriSource]:
    """A folder's images, sorted by path; on a local file system the outputs its manifests
    record are left out, as the local scan does."""
    infos = _children(fs, folder, recursive)
    recorded: set[str] = set()
    if local:
        for info in infos:
            if info.base_name == MANIFEST_NAME and info.type == pafs.FileType.File:
                recorded |= recorded_paths(Path(info.path).parent)
    files = [
        i
        for i in infos
        if i.type == pafs.FileType.File and is_image_name(Path(i.base_name)) and i.path not in recorded
    ]
    files.sort(key=lambda i: i.path.encode("utf-8", "surrogateescape"))
    return [_listed(fs, info, root, root_uri, local) for info in files]


def _listed(fs: pafs.FileSystem, info: pafs.FileInfo, root: str, root_uri: str, local: bool) -> UriSource:
    rel = info.path[len(root) :].lstrip("/") if root not in ("", "/") else info.path.lstrip("/")
    uri = f"{root_uri}/{rel}"
    size, mtime = info.size, info.mtime_ns
    stat = (int(size), int(mtime)) if size is not None and mtime is not None else None
    path = Path(info.path) if local else Path(uri)
    return UriSource(path, Path(rel), uri=uri, stat=stat, fs=fs, fs_path=info.path)


def _line(exc: BaseException, limit: int = 240) -> str:
    """An exception as part of a one-line message: its first line, cut at `limit` characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def plan_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    recursive: bool = False,
    reserved: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> OutputPlan:
    """The output plan of a Ray run: local paths and globs as the local job lists them
    (jobs.plan_segment_files), URIs through pyarrow's file systems (list_uri); outputs go
    to `out_dir`, a local or shared folder (or a file:// URI)."""
    args = [os.fspath(i) for i in inputs]
    out = local_path(out_dir)
    if not any(is_uri(a) for a in args):
        return plan_segment_files(args, out, save=tuple(save), recursive=recursive, reserved=reserved)
    sources: list[Source] = []
    roots: list[str] = []  # the local folders the run reads: outputs there take kind suffixes
    for arg in args:
        if is_uri(arg):
            sources += list_uri(arg, recursive)
            fs, path = open_filesystem(arg)  # no I/O: the listing opened it the same way
            roots.append(path if isinstance(fs, pafs.LocalFileSystem) else arg)
        else:
            sources += find_images([arg], recursive)
            roots.append(arg)
    once = {source_key(s): s for s in reversed(sources)}  # each input once, at its first place
    unique = [s for s in sources if once.get(source_key(s)) is s]
    return OutputPlan.build(roots, out, tuple(save), recursive=recursive, reserved=reserved, sources=unique)


# -- the rows ----------------------------------------------------------------------------------


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            ("input", pa.string()),  # the path as planned (the result's source.path)
            ("abs", pa.string()),  # absolute path or URI: what actors open, the manifest's key
            ("fs", pa.int32()),  # index into _ActorJob.filesystems; -1: a local path
            ("fs_path", pa.string()),  # the path inside that file system
            ("stat", pa.list_(pa.int64())),  # [size, mtime_ns] as listed (URIs); None: os.stat
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


class FileSystems:
    """The distinct pyarrow file systems of a run's rows, numbered as the rows name them."""

    def __init__(self) -> None:
        self.items: list[pafs.FileSystem] = []
        self._index: dict[int, int] = {}

    def index(self, fs: pafs.FileSystem) -> int:
        known = self._index.get(id(fs))
        if known is None:
            known = self._index[id(fs)] = len(self.items)
            self.items.append(fs)
        return known


def _plan_row(
    entry: Planned | Source, out_dir: Path, filesystems: FileSystems | None = None
) -> dict[str, Any]:
    if isinstance(entry, Source):
        return _empty_row(entry, status="failed", error=entry.error)
    row = _empty_row(entry.source, filesystems=filesystems)
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


def _empty_row(
    src: Source, status: str = "", error: str = "", filesystems: FileSystems | None = None
) -> dict[str, Any]:
    uri = src if isinstance(src, UriSource) and src.fs is not None else None
    return {
        "input": os.fspath(source_name(src)),
        "abs": source_key(src),
        "fs": filesystems.index(uri.fs) if uri is not None and filesystems is not None else -1,
        "fs_path": uri.fs_path if uri is not None else "",
        "stat": list(src.stat) if isinstance(src, ListedSource) and src.stat else None,
        "rel": src.rel.as_posix(),
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
    plan: OutputPlan,
    rows_per_block: int,
    stop: threading.Event | None,
    todo_only: bool = False,
    filesystems: FileSystems | None = None,
) -> Iterator[pa.Table]:
    """The planned input rows in Arrow tables of `rows_per_block` rows (`todo_only`: only
    those an actor must run); the rows' file systems are numbered in `filesystems`."""
    schema = _input_schema()
    rows: list[dict[str, Any]] = []
    for entry in plan.entries:
        if stop is not None and stop.is_set():
            return
        if todo_only and _settled(entry):
            continue
        rows.append(_plan_row(entry, plan.out_dir, filesystems))
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
