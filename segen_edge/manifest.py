"""The manifest of an output folder: which input made which output, with which model and settings.

Every `segment` run into a folder OUT appends to `OUT/segen-manifest.jsonl` (JSON Lines,
UTF-8, one object per line, append-only; paths that are not valid UTF-8 are kept as
`\\udcXX` escapes, which `json.loads` and `os.fsencode` turn back into the same bytes).
Three kinds of line, each with `"v": 1`:

- `{"type": "run", "key": K, "model": {"name", "file", "sha256"}, "settings": {...}}`:
  written once per distinct key. `sha256` covers the .onnx bytes and its external data
  files; `settings` holds what changes an output: `info` (a digest of the model's
  description: classes, palette, preprocessing), `mode`, `overlap`, `blend`,
  `keep_aspect`, `alpha` (matters to overlays only) and `keep` (cutouts and binaries only).
- `{"type": "claim", "input": ABS, "base": REL, "outputs": {KIND: REL}, "key": K}`:
  written just before an input's outputs are written. An output whose last line is a claim
  was being written when the run stopped; the next run redoes it.
- `{"type": "done", "input": ABS, "base": REL, "outputs": {KIND: REL}, "key": K,
  "input_stat": [SIZE, MTIME_NS], "size_hw": [H, W], "class_fractions": {NAME: F}}`:
  written once those outputs are all on disk.

ABS is the input's absolute path (os.path.abspath, symlinks kept), REL an output's path
relative to OUT in POSIX form. A reader folds the lines in order: the last line that names
an output path says who owns it. A torn last line (the process was killed mid-append) is
ignored. Lines are appended with one `write` each on an O_APPEND descriptor, so two
processes writing one folder (the Ray engine's workers) never interleave within a line.

What a re-run does with each output it plans (see `Manifest.state`):
- absent: written;
- owned by this input, `done`, same relevant settings, input unchanged: kept (skipped);
- owned by this input, `claim`: redone (its write never completed);
- owned by this input, `done`, but made with another model/settings, or the input's size or
  mtime changed since: *stale*; the run is refused before any work unless `--overwrite`;
- present but not in the manifest (a file segen-edge did not make there, or made before
  manifests existed): *foreign*; refused unless `--overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger("segen_edge")

MANIFEST_NAME = "segen-manifest.jsonl"
VERSION = 1
KIND_SETTINGS = {"overlay": ("alpha",), "cutout": ("keep",), "cutout-soft": ("keep",), "binary": ("keep",)}
COMMON_SETTINGS = ("info", "mode", "overlap", "blend", "keep_aspect")


@dataclass(frozen=True)
class Owner:
    """The last manifest line that names one output path."""

    input: str  # absolute input path
    kind: str
    state: str  # claim | done
    key: str


@dataclass
class InputRecord:
    """What the manifest last said about one input's outputs."""

    base: str  # REL of the output stem (mask = base + ".png" or ".mask.png")
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> REL
    input_stat: tuple[int, int] | None = None
    size_hw: tuple[int, int] | None = None
    class_fractions: dict[str, float] | None = None


def model_digest(path: Path) -> str:
    """sha256 of a model file and of each external data file it names (hex, 16 digits)."""
    digest = hashlib.sha256()
    try:
        data = path.read_bytes()
    except OSError:
        return "unknown"
    digest.update(data)
    from .cache import external_data_files

    for location in external_data_files(data):
        digest.update(location.encode())
        try:
            with open(path.parent / location, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()[:16]


def run_record(model: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `run` line for a model ({"name", "file", "sha256"}) and settings; its key is a
    digest of both, so equal runs share one line."""
    body = {"model": dict(model), "settings": dict(settings)}
    key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {"v": VERSION, "type": "run", "key": key, **body}


def relevant(settings: Mapping[str, Any], model_sha: str, kind: str) -> tuple[Any, ...]:
    """The part of a run that decides how an output of `kind` looks."""
    names = COMMON_SETTINGS + KIND_SETTINGS.get(kind, ())
    return (model_sha, *(json.dumps(settings.get(n), sort_keys=True) for n in names))


def input_stat(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))


def rel_of(out_dir: Path, path: Path) -> str:
    """An output's REL: relative to OUT, POSIX separators."""
    text, prefix = os.fspath(path), os.fspath(out_dir).rstrip(os.sep) + os.sep
    if text.startswith(prefix) and f"{os.sep}..{os.sep}" not in text[len(prefix) - 1 :] + os.sep:
        rel = text[len(prefix) :]  # outputs are built as OUT / REL: no need to ask relpath
    else:
        rel = os.path.relpath(path, out_dir)
    return rel.replace(os.sep, "/") if os.sep != "/" else PurePosixPath(rel).as_posix()


class Manifest:
    """The folded manifest of one output folder, and the appender for this run.

    Pure function of the file: `Manifest.load(out)` in any process gives the same owners.
    Appends are thread-safe (one lock, one write per line).
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.owners: dict[str, Owner] = {}
        self.inputs: dict[str, InputRecord] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Manifest:
        manifest = cls(Path(out_dir))
        try:
            if not stat.S_ISREG(os.stat(manifest.path).st_mode):
                from .errors import BadInputError

                raise BadInputError(
                    f"{manifest.path}: not a regular file; move it away or pick another --out"
                )
            with open(manifest.path, "rb") as fh:
                lines = fh.read().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return manifest
        except OSError as exc:
            from .errors import BadInputError

            raise BadInputError(
                f"{manifest.path}: cannot read the manifest ({exc.strerror or exc}); "
                "check its permissions or pick another --out"
            ) from None
        manifest.fold(lines)
        return manifest

    def fold(self, lines: Iterable[bytes]) -> None:
        torn = 0
        for raw in lines:
            try:
                record = json.loads(raw)
                kind = record["type"]
            except (ValueError, TypeError, KeyError):
                torn += 1
                continue
            if not isinstance(record, dict):
                torn += 1
                continue
            try:
                self._apply(kind, record)
            except (KeyError, TypeError, ValueError, AttributeError):
                torn += 1
        if torn:
            log.info("%s: %d unreadable line(s) ignored", self.path, torn)

    def _apply(self, kind: str, record: dict[str, Any]) -> None:
        if kind == "run":
            self.runs[str(record["key"])] = record
            return
        if kind not in ("claim", "done"):
            return
        source, key = str(record["input"]), str(record["key"])
        outputs = {str(k): str(v) for k, v in dict(record["outputs"]).items()}
        for out_kind, rel in outputs.items():
            previous = self.owners.get(rel)
            if previous is not None and previous.input != source:
                old = self.inputs.get(previous.input)
                if old is not None:
                    old.outputs.pop(previous.kind, None)
            self.owners[rel] = Owner(source, out_kind, kind, key)
        entry = self.inputs.setdefault(source, InputRecord(str(record["base"])))
        entry.base = str(record["base"])
        entry.outputs.update(outputs)
        if kind == "done":
            stat = record.get("input_stat")
            entry.input_stat = (int(stat[0]), int(stat[1])) if stat else None
            size = record.get("size_hw")
            entry.size_hw = (int(size[0]), int(size[1])) if size else None
            fractions = record.get("class_fractions")
            entry.class_fractions = dict(fractions) if isinstance(fractions, dict) else None

    # -- asking ---------------------------------------------------------------------------

    def owner(self, rel: str) -> Owner | None:
        return self.owners.get(rel)

    def recorded_outputs(self) -> set[str]:
        return set(self.owners)

    def state(
        self, source: str, kind: str, rel: str, run: Mapping[str, Any], stat: tuple[int, int] | None
    ) -> str:
        """What to do with the output `rel` of `source`: todo | done | stale | foreign.

        The caller has checked that the file exists (an absent output is always todo)."""
        owner = self.owners.get(rel)
        if owner is None or owner.input != source or owner.kind != kind:
            return "foreign"
        if owner.state != "done":
            return "todo"
        made = self.runs.get(owner.key)
        if made is None:
            return "stale"
        before = relevant(made["settings"], made["model"].get("sha256", ""), kind)
        now = relevant(run["settings"], run["model"].get("sha256", ""), kind)
        if before != now:
            return "stale"
        recorded = self.inputs.get(source)
        if recorded is not None and recorded.input_stat is not None and stat != recorded.input_stat:
            return "stale"
        return "done"

    def differences(self, rel: str, run: Mapping[str, Any]) -> str:
        """What differs between the run that made `rel` and `run`, for a message:
        "model tiny.onnx (sha256 ab12...) -> other.onnx (sha256 cd34...), mode resize -> tile"."""
        owner = self.owners.get(rel)
        made = self.runs.get(owner.key) if owner else None
        if not made or owner is None:
            return "an unrecorded run"
        parts = []
        old_model, new_model = made.get("model", {}), run.get("model", {})
        if old_model.get("sha256") != new_model.get("sha256"):
            parts.append(f"model {_model(old_model)} -> {_model(new_model)}")
        names = COMMON_SETTINGS + KIND_SETTINGS.get(owner.kind, ())
        for name in names:
            before, now = made["settings"].get(name), run["settings"].get(name)
            if before != now:
                if name == "info":
                    parts.append("the model's description (classes, palette or preprocessing)")
                else:
                    parts.append(f"{name} {before} -> {now}")
        return ", ".join(parts) or "settings"

    # -- writing --------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> None:
        """One line, one write; the file (and OUT) made on first use."""
        line = (json.dumps({"v": VERSION, **record}, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                from .files import WriteError

                try:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(
                        self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666
                    )
                except OSError as exc:
                    raise WriteError(
                        f"{self.path}: cannot write the manifest ({exc.strerror or exc}); "
                        "check the folder is writable"
                    ) from None
            os.write(self._fd, line)
            self._apply(str(record["type"]), json.loads(line))

    def start(self, run: Mapping[str, Any]) -> None:
        """Record the run line, unless an equal run was recorded before."""
        if run["key"] not in self.runs:
            self.append(run)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _model(model: Mapping[str, Any]) -> str:
    return f"{model.get('file') or model.get('name') or '?'} (sha256 {model.get('sha256', '?')})"


def recorded_paths(folder: Path) -> frozenset[str]:
    """Absolute paths of the outputs the manifest in `folder` records (empty without one);
    used by the input scan, so a folder's own outputs are never read as inputs."""
    if not (folder / MANIFEST_NAME).is_file():
        return frozenset()
    try:
        manifest = Manifest.load(folder)
    except ValueError:
        return frozenset()
    base = os.path.abspath(folder)
    return frozenset(os.path.normpath(os.path.join(base, rel)) for rel in manifest.owners)
