"""The Ray actors of a segment run: the model as it travels to them (ModelShipment), and
SegmentActor, which opens it once and segments and writes each batch of rows."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray  # the real Ray: this package's own name never shadows it (absolute imports)

from .. import zoo
from ..cache import external_data_files
from ..errors import BadInputError, ModelError
from ..files import WriteError
from ..images import Decoded, decode_image, load_image
from ..jobs import SaveOptions
from ..loading import Source as ModelSource
from ..loading import load_segmenter
from ..manifest import Manifest, input_stat, rel_of
from ..metadata import ModelInfo
from ..onnxmeta import read_model_bytes
from ..segment import RunSettings, Segmentation, Segmenter
from ..session import create_session
from .listing import _line, result_schema

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
    filesystems: tuple[Any, ...] = ()  # pyarrow file systems of URI inputs, as rows number them


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
            out.append((row, _decode(row, segmenter.info.channels, job)))
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


def _decode(row: dict[str, Any], channels: int, job: _ActorJob) -> Decoded:
    """A row's image: a local file, or a URI's bytes read through its pyarrow file system
    (decoded by the same decoder, so a bad file gives the same error, naming the URI)."""
    if row.get("fs", -1) < 0:
        return load_image(row["abs"], channels, job.max_pixels)
    name = row["input"]
    try:
        with job.filesystems[row["fs"]].open_input_stream(row["fs_path"]) as stream:
            data = stream.readall()
    except FileNotFoundError:
        raise BadInputError(f"{name}: file not found; check the URI") from None
    except PermissionError:
        raise BadInputError(f"{name}: permission denied; check the credentials") from None
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{name}: cannot read the file ({_line(exc)})") from None
    return decode_image(io.BytesIO(data), channels, job.max_pixels, name=name)


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
        stat = list(row["stat"]) if row.get("stat") else input_stat(row["abs"])
        line("done", input_stat=stat, size_hw=list(decoded.size), class_fractions=fractions)
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
