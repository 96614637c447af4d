"""The summary of a Ray run, one row per input (JSONL or Parquet): its writer and reader."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import WriteError
from ..segment import RunSettings
from .listing import BLOCK_ROWS, local_path, result_schema

SUMMARY_NAME = "segen-ray-summary.jsonl"


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
