"""The driver's listing of a Ray run: input paths and file:// URIs, the planned input rows
and the result rows' schema, and the Arrow blocks they travel in through the object store."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray  # the real Ray: this package's own name never shadows it (absolute imports)

from ..errors import BadInputError
from ..files import Source
from ..manifest import rel_of
from ..plan import OutputPlan, Planned

BLOCK_ROWS = 1024  # rows per listing block in the object store


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
