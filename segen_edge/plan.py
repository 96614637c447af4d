"""The output plan of a segment run: every input and every output, seen before anything is written.

`OutputPlan.build(inputs, out, kinds)` lists every input first (paths only: about 200 bytes
an input, so a million files cost a few hundred MB; the scan itself stays lazy and sorted,
folder by folder), then gives each input its output paths and refuses, with one line and
before any work, a run that would

- write an output onto an input of the run (`--out` a parent of an input folder),
- write outside `--out` (a glob with `..` after a wildcard),
- give two outputs one name that no renaming can part,
- put `--summary` / `--json FILE` on an input, an output, a non-JSON file or a non-file.

Names (the rule, a pure function of the input list, the out folder and its manifest):
- `<out>/<input's folder relative to its root>/<stem>.png`, `<stem>.color.png`, ...;
- when that folder is (inside) a folder the run scans, every output takes a kind suffix
  (`.mask.png`, ...), which scans never read as input, so a re-run never segments its own
  outputs and no output lands on an input;
- an input whose outputs the manifest records keeps those names (a kind added on a re-run
  takes the recorded stem);
- otherwise clashes are settled in a fixed order (sorted by output stem, then input path,
  never by argument order): the first keeps `<stem>`, the next get `<stem>_<ext>`,
  `<stem>_<ext>2`, ...; an output name over 255 bytes is cut and given a hash of the input
  name, so it stays unique and the same on every run.
`-o NAME.png` with a single input image writes that file (no manifest then: an existing
NAME.png is kept unless `--overwrite`).

The Ray engine builds the same plan in its driver and ships `Planned` entries (plain
paths) to its workers. Inputs it lists itself (URIs on pyarrow's file systems) come in as
`ListedSource`s through `OutputPlan.build(..., sources=...)`: named and keyed in the
manifest by their URI, with the size and mtime the listing saw; the local engine refuses
URIs (with a pointer to `--engine ray`).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .files import IMAGE_SUFFIXES, Source, find_images, glob_root
from .manifest import MANIFEST_NAME, Manifest, input_stat, rel_of

# The name each output kind takes after the input's stem (a mask is STEM.png unless its
# folder is scanned). Every suffix here is also in images.OUTPUT_SUFFIXES, never read as input.
SUFFIXES = {
    "mask": ".mask.png",
    "color": ".color.png",
    "overlay": ".overlay.png",
    "cutout": ".cutout.png",
    "cutout-soft": ".cutout-soft.png",
    "binary": ".binary.png",
    "prob": ".prob.npz",
}
NAME_MAX = 255  # bytes in one file name on every common file system


class PlanError(BadInputError):
    """A run refused before any work: what clashes, and the fix."""


@dataclass(frozen=True)
class ListedSource(Source):
    """An input listed by the caller, not by find_images (the Ray engine's URI inputs).

    `uri` names it in messages and is its manifest key; `stat` is its (size, mtime_ns) as
    listed, for the manifest's change check; `path` is where it would sit on this machine's
    file system (a local path for file:// URIs, so no output lands on it)."""

    uri: str = ""
    stat: tuple[int, int] | None = None


def source_key(src: Source) -> str:
    """An input's key in the plan and the manifest: its URI, or its absolute path."""
    return src.uri if isinstance(src, ListedSource) and src.uri else os.path.abspath(src.path)


def source_name(src: Source) -> str | os.PathLike[str]:
    """An input as messages name it: its URI, or its path."""
    return src.uri if isinstance(src, ListedSource) and src.uri else src.path


def _source_stat(src: Source) -> tuple[int, int] | None:
    return src.stat if isinstance(src, ListedSource) and src.uri else input_stat(src.path)


def uri_scheme(text: str) -> str:
    """The scheme of a `scheme://...` URI, lower case; "" for a local path."""
    head, sep, _ = text.partition("://")
    scheme = len(head) > 1 and head[:1].isalpha() and all(c.isalnum() or c in "+.-" for c in head)
    return head.lower() if sep and head.isascii() and scheme else ""


@dataclass
class Planned:
    """One input and where its outputs go; `todo` are the kinds this run writes."""

    source: Source
    targets: dict[str, Path]
    base: Path
    todo: tuple[str, ...] = ()
    skip: bool = False  # every output exists and is up to date: nothing to run
    record: Any = None  # the manifest's InputRecord for a skipped input (fractions, size)

    @property
    def key(self) -> str:
        return source_key(self.source)


@dataclass
class OutputPlan:
    """Every input of a run (in input order) with its outputs; failed sources ride along."""

    out_dir: Path
    kinds: tuple[str, ...]
    entries: list[Planned | Source] = field(default_factory=list)
    single_file: bool = False
    manifest: Manifest | None = None

    @property
    def total(self) -> int:
        return len(self.entries)

    def targets(self, src: Source) -> dict[str, Path]:
        for entry in self.entries:
            if isinstance(entry, Planned) and entry.source.path == src.path:
                return entry.targets
        raise KeyError(src.path)

    def outputs(self) -> list[Path]:
        return [p for e in self.entries if isinstance(e, Planned) for p in e.targets.values()]

    @classmethod
    def build(
        cls,
        inputs: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        kinds: Sequence[str],
        *,
        recursive: bool = False,
        reserved: Mapping[str, str | os.PathLike[str] | None] | None = None,
        sources: Iterable[Source] | None = None,
    ) -> OutputPlan:
        """Plan a run; PlanError (a BadInputError) for anything that would lose data.

        `reserved`: other files the run writes, by flag (`{"--summary": "s.json"}`).
        `sources`: the inputs, listed by the caller (Sources and ListedSources, each once);
        then `inputs` only name the local folders the run reads, for the output names."""
        args = [os.fspath(i) for i in inputs]
        out = Path(out_dir)
        kinds = tuple(kinds)
        if sources is None:
            _refuse_uris(args)
            sources = find_images(args, recursive)
        sources = list(sources)
        good = [s for s in sources if not s.error]
        single = _single_file(out, good)
        if not single:
            _check_out_folder(out)
        manifest = None if single else Manifest.load(out)
        plan = cls(out, kinds, [], single, manifest)
        planned = _assign(out, kinds, good, args, manifest, single)
        plan.entries = [planned.get(source_key(s), s) if not s.error else s for s in sources]
        _check_reserved(plan, good, reserved or {})
        return plan

    def resolve(self, run: Mapping[str, Any], overwrite: bool) -> None:
        """Decide per input what to write, from the disk and the manifest (see manifest.py).

        Refuses the whole run (PlanError) when an existing output is stale (another model,
        settings or input) or foreign (not made by segen-edge for this input), unless
        `overwrite`; nothing is written either way."""
        stale: list[tuple[Path, str]] = []
        foreign: list[Path] = []
        changed: list[tuple[str | os.PathLike[str], Path]] = []
        for entry in self.entries:
            if not isinstance(entry, Planned):
                continue
            todo: list[str] = []
            stat = _source_stat(entry.source) if self.manifest else None
            for kind, path in entry.targets.items():
                if overwrite or not os.path.lexists(path) or os.path.isdir(path):
                    todo.append(kind)  # a folder in the way fails when written, never "done"
                    continue
                if self.manifest is None:
                    foreign.append(path)
                    continue
                rel = rel_of(self.out_dir, path)
                state = self.manifest.state(entry.key, kind, rel, run, stat)
                if state == "todo":
                    todo.append(kind)
                elif state == "foreign":
                    foreign.append(path)
                elif state == "stale":
                    record = self.manifest.inputs.get(entry.key)
                    if record and record.input_stat is not None and record.input_stat != stat:
                        changed.append((source_name(entry.source), path))
                    else:
                        stale.append((path, rel))
            entry.todo = tuple(todo)
            entry.skip = not todo
            if entry.skip and self.manifest is not None:
                entry.record = self.manifest.inputs.get(entry.key)
        if self.single_file and foreign:
            raise PlanError(f"{_show(foreign[0])}: exists; pass --overwrite to replace it")
        if foreign:
            raise PlanError(
                f"{_show(foreign[0])}{_more(foreign)} exist(s) but {_show(self.out_dir / MANIFEST_NAME)} "
                "does not record them as outputs of these inputs (made by hand, by another input or "
                "before manifests); pass --overwrite to replace them, or pick another --out"
            )
        if changed:
            source, path = changed[0]
            raise PlanError(
                f"{_show(source)}{_more(changed)} changed since {_show(path)} was made from it; "
                "pass --overwrite to redo them, or pick another --out"
            )
        if stale:
            path, rel = stale[0]
            assert self.manifest is not None
            raise PlanError(
                f"{_show(path)}{_more(stale)}: made by another run than this one "
                f"({self.manifest.differences(rel, run)}); pass --overwrite to redo them, "
                "or pick another --out"
            )


def _refuse_uris(args: list[str]) -> None:
    """URIs pyarrow reads are the Ray engine's; web URLs keep find_images' refusal."""
    for arg in args:
        scheme = uri_scheme(arg)
        if scheme and scheme not in ("http", "https", "ftp"):
            raise PlanError(
                f"{_show(arg)}: {scheme}:// inputs are read by the Ray engine only; pass --engine ray "
                "(segen_edge.ray), or a local path"
            )


# -- naming -----------------------------------------------------------------------------------


def _check_out_folder(out: Path) -> None:
    """--out is a folder, or can become one: no file at it or above it."""
    probe = Path(os.path.abspath(out))
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        what = "--out" if probe == Path(os.path.abspath(out)) else f"--out {_show(out)}: its folder"
        raise PlanError(f"{what} {_show(probe)} is a file, not a folder; pick another --out")


def _single_file(out: Path, good: list[Source]) -> bool:
    """`-o NAME.png` with one input image: write that file, not a folder NAME.png."""
    if out.is_dir() or out.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    if out.suffix.lower() != ".png":
        raise PlanError(f"-o {_show(out)}: outputs are PNG files; name a .png file or a folder")
    if len(good) > 1:
        raise PlanError(
            f"-o {_show(out)} names one file, but the inputs hold {len(good)} images; give a folder to -o"
        )
    return len(good) == 1


def _assign(
    out: Path,
    kinds: tuple[str, ...],
    sources: list[Source],
    args: list[str],
    manifest: Manifest | None,
    single: bool,
) -> dict[str, Planned]:
    out_abs = os.path.normpath(os.path.abspath(out))
    real_of = _Real()
    inputs_real = {real_of(s.path): s for s in sources}
    recorded = bool(manifest and manifest.owners)
    roots = sorted({os.path.realpath(_root_of(a)) for a in args})  # 10,000 files: one folder
    claimed: dict[str, str] = {}  # realpath of an output -> the input that has it
    planned: dict[str, Planned] = {}

    def blocked(path: Path, who: str) -> str:
        """'' when `who` may write `path`; else 'input' (an input of the run) or 'taken'."""
        real = real_of(path)
        if real in inputs_real:
            return "input"
        if claimed.get(real, who) != who:
            return "taken"
        if recorded and manifest is not None:
            owner = manifest.owner(rel_of(out, path))
            mine = owner is None or owner.input == who
            if not mine and (owner.input in live_inputs or os.path.lexists(path)):  # type: ignore[union-attr]
                return "taken"  # another input's output: never taken over
        return ""

    def free(targets: dict[str, Path], who: str) -> str:
        reasons = {blocked(p, who) for p in targets.values()} - {""}
        return "input" if "input" in reasons else ("taken" if reasons else "")

    def claim(entry: Planned) -> None:
        for path in entry.targets.values():
            claimed[real_of(path)] = entry.key

    live_inputs = {source_key(s) for s in sources}
    if single:
        (src,) = sources
        base = out.with_suffix("")
        targets = {k: (out if k == "mask" else base.with_name(base.name + SUFFIXES[k])) for k in kinds}
        if real_of(out) in inputs_real:
            raise PlanError(f"-o {_show(out)} is the input itself; pick another name")
        entry = Planned(src, targets, base)
        return {entry.key: entry}

    fresh: list[tuple[str, Source]] = []
    for src in sources:
        key = source_key(src)
        natural = os.path.normpath(os.path.join(out_abs, src.rel.parent, src.rel.stem))
        if os.path.commonpath([natural, out_abs]) != out_abs or natural == out_abs:
            raise PlanError(
                f"{_show(source_name(src))}: its output would land outside --out {_show(out)} "
                f"(its path relative to the input folder is {_show(src.rel)}); "
                "do not put '..' after a wildcard, or name the folder itself"
            )
        record = manifest.inputs.get(key) if manifest else None
        if record is not None and record.outputs:
            sticky = _sticky(out, kinds, record, _scanned(natural, roots, real_of))
            if not free(sticky.targets, key):
                entry = Planned(src, sticky.targets, sticky.base)
                planned[key] = entry
                claim(entry)
                continue
        fresh.append((natural, src))

    for natural, src in sorted(fresh, key=lambda pair: (pair[0], os.fsencode(source_name(pair[1])))):
        key = source_key(src)
        suffixed = _scanned(natural, roots, real_of)
        for base in _bases(Path(natural), src):
            targets = _targets(base, kinds, suffixed, src)
            why = free(targets, key)
            if why == "input" and not suffixed:  # an output on an input: kind suffixes are never inputs
                targets = _targets(base, kinds, True, src)
                why = free(targets, key)
            if not why:
                break
        else:  # pragma: no cover - _bases never ends
            raise PlanError(f"{_show(source_name(src))}: no free output name")
        entry = Planned(src, targets, base)
        planned[key] = entry
        claim(entry)
    return planned


def _sticky(out: Path, kinds: tuple[str, ...], record: Any, suffixed: bool) -> Planned:
    """The recorded names of an input; a kind it lacks takes the recorded stem."""
    base = out / record.base
    targets = {}
    for kind in kinds:
        rel = record.outputs.get(kind)
        if rel is not None:
            targets[kind] = out / rel
        else:
            suffix = ".png" if kind == "mask" and not suffixed else SUFFIXES[kind]
            targets[kind] = base.with_name(base.name + suffix)
    return Planned(Source(Path(), Path()), targets, base)


def _bases(natural: Path, src: Source) -> Iterable[Path]:
    """Candidate output stems: STEM, then STEM_EXT, STEM_EXT2, ..."""
    yield natural
    alias = f"{natural.name}_{src.rel.suffix.lstrip('.').lower() or 'file'}"
    yield natural.with_name(alias)
    n = 2
    while True:
        yield natural.with_name(f"{alias}{n}")
        n += 1


def _targets(base: Path, kinds: tuple[str, ...], suffixed: bool, src: Source) -> dict[str, Path]:
    names = dict(SUFFIXES, mask=SUFFIXES["mask"] if suffixed else ".png")
    stem = _fit(base.name, max(len(os.fsencode(names[k])) for k in kinds), src)
    return {kind: base.with_name(stem + names[kind]) for kind in kinds}


def _fit(stem: str, suffix_bytes: int, src: Source) -> str:
    """`stem`, cut to leave room for the longest suffix, with a hash of the input name when
    cut: the same input always gets the same short name, two inputs never one."""
    if len(os.fsencode(stem)) + suffix_bytes <= NAME_MAX:
        return stem
    tag = "~" + hashlib.sha256(os.fsencode(stem) + os.fsencode(src.rel)).hexdigest()[:10]
    room = NAME_MAX - suffix_bytes - len(tag)
    cut = stem
    while len(os.fsencode(cut)) > room:
        cut = cut[:-1]
    return cut + tag


def _scanned(folder_of_base: str, roots: list[str], real_of: _Real) -> bool:
    """Whether outputs at this stem land in (or under) a folder the run reads."""
    folder = real_of.folder(os.path.dirname(folder_of_base))
    return any(folder == r or folder.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _root_of(arg: str) -> Path:
    """The folder an input argument scans: itself, its parent, or a glob's fixed prefix."""
    if glob.has_magic(arg) and not os.path.lexists(arg):
        return glob_root(arg)
    path = Path(arg)
    return path if path.is_dir() else path.parent


class _Real:
    """os.path.realpath of files, resolving each folder once (a file's own symlink too):
    realpath costs a system call per path component, which shows over 100,000 files."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}
        self._files: dict[str, str] = {}

    def folder(self, folder: str) -> str:
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder or ".")
        return real

    def __call__(self, path: os.PathLike[str] | str) -> str:
        text = os.fspath(path)
        known = self._files.get(text)
        if known is None:
            folder, name = os.path.split(text)
            joined = os.path.join(self.folder(folder), name)
            known = os.path.realpath(joined) if os.path.islink(joined) else joined
            self._files[text] = known
        return known


def _check_reserved(plan: OutputPlan, sources: list[Source], reserved: Mapping[str, Any]) -> None:
    """--summary and --json FILE: never on an input, an output, a non-JSON file or a non-file."""
    if not any(v is not None and os.fspath(v) not in ("", "-") for v in reserved.values()):
        return
    real_of = _Real()
    inputs = {real_of(s.path) for s in sources}
    outputs = {real_of(p) for p in plan.outputs()}
    seen: dict[str, str] = {}
    for flag, value in reserved.items():
        if value is None or os.fspath(value) in ("", "-"):
            continue
        path = Path(value)
        real = os.path.realpath(path)
        if real in inputs:
            raise PlanError(f"{flag} {_show(path)}: is an input of this run; pick another file")
        if real in outputs:
            raise PlanError(f"{flag} {_show(path)}: is where an output goes; pick another file")
        if real in seen:
            raise PlanError(f"{flag} {_show(path)}: is also given to {seen[real]}; pick another file")
        seen[real] = flag
        check_writable_file(path, flag, ".json")


def check_writable_file(path: Path, flag: str, suffix: str) -> None:
    """A file the CLI will replace: absent, or a regular file ending in `suffix`."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise PlanError(f"{flag} {_show(path)}: is a folder; name a {suffix} file")
    if not path.is_file():
        raise PlanError(
            f"{flag} {_show(path)}: not a regular file (a pipe, socket or device); name a {suffix} file"
        )
    if path.suffix.lower() != suffix:
        raise PlanError(f"{flag} {_show(path)}: exists and is not a {suffix} file; pick another name")


def _show(path: os.PathLike[str] | str) -> str:
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _more(items: Sequence[object]) -> str:
    return f" and {len(items) - 1} more" if len(items) > 1 else ""
