"""This machine's own timings for `auto`.

`--device auto` and `--precision auto` choose from the export's per-provider figures, which
were taken on the machine that built the model (the bundled ones: a 2-core AVX2 EPYC). On
another CPU the fastest choice can differ (OpenVINO's int8 kernels gain most where VNNI is
present; bf16 exists only with AVX512-BF16 or AMX). `segen-edge tune` (`tune()` here) times,
on this machine, every provider and precision a model may run in, one thread per run and one
batch at a time as the batch job runs them, and at batch 1 also on every core, as one call
at a time runs (the fastest engine can differ between the two), the candidates taking turns
(see time_together), and records the figures in the cache folder (`tuning.json`). `best()` reads
that record for the job's batch size and threads; `auto` takes it before the export's
figures.

Only what is known to be accurate on a provider is timed there: fp32 everywhere; another
precision where the model's card records it within its accuracy budget on that provider
(the export's agreement check), and on the CPU EP the very file the user named when its card
has no CPU EP rows (their choice). A file that failed its check, or a sibling precision
nothing has checked (an int8 file some other tool wrote beside the fp32 one), is never
timed nor picked; except a generator's, which `tune` checks itself against the fp32 file on
seeded latents, a generator's very inputs, and a segmenter's, which `tune --data` checks on
the user's own images (check_siblings).
The record is keyed by the bytes of every file timed, onnxruntime's version and the CPU
(cache.cache_key), so a changed model, upgrade or machine is timed afresh.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import cache, zoo
from .errors import BadInputError, ProviderError
from .pipeline import cpu_count
from .providers import has_bf16

RECORD = "tuning.json"
CHECK_SAMPLES = 64  # seeded latents for a generator's sibling check
CHECK_IMAGES = 16  # the user's images for a segmenter's
BLOCK = 5  # calls per turn when each call runs on several threads (the first not counted)
SCHEMA = 1


@dataclass(frozen=True)
class Candidate:
    """One way to run a model here: a provider, and a file in a precision."""

    provider: str  # cpu | openvino | openvino-runtime
    precision: str  # fp32 | fp16 | int8 | bf16 (the fp32 file computed in bfloat16)
    file: str  # the file's key in the model's files or variants: fp32, int8, int8.openvino
    path: Path
    bf16: bool = False


@dataclass(frozen=True)
class Timing:
    provider: str
    precision: str
    file: str
    batch: int
    p50_ms: float
    threads: int = 1  # threads per run: 1 as the batch job's lanes run; every core for latency


def candidates(ref: zoo.ModelRef, providers: Sequence[str]) -> list[Candidate]:
    """Every (provider, file) of `ref` that is known to be accurate on that provider."""
    if ref.explicit is not None and not ref.files:
        return _lone_file(ref.explicit, providers)
    rows_by_provider = ref.measurements()
    found: list[Candidate] = []
    for provider in providers:
        rows = rows_by_provider.get(provider, {}).get("precisions", {})
        passed = {
            (str(row.get("file", name)), bool(row.get("bf16")))
            for name, row in rows.items()
            if isinstance(row, dict) and row.get("within_budget") is True
        }
        for key, path in ref.files.items():
            named = provider == "cpu" and not rows and path == ref.explicit
            if key == "fp32" or (key, False) in passed or named:
                found.append(Candidate(provider, key, key, path))
        for key, path in ref.variants.items():  # files made for one provider: int8.openvino
            if key.endswith(f".{provider}") and (key, False) in passed:
                found.append(Candidate(provider, key.split(".")[0], key, path))
        if (
            provider in ("openvino", "openvino-runtime")
            and "fp32" in ref.files
            and ("fp32", True) in passed
            and has_bf16()
        ):
            found.append(Candidate(provider, "bf16", "fp32", ref.files["fp32"], bf16=True))
    return found


def _lone_file(path: Path, providers: Sequence[str]) -> list[Candidate]:
    """A file with no sibling precisions: on every provider when it computes in float, on
    the CPU EP only when it is quantized (nothing says how it fares under OpenVINO)."""
    from .graph import summarize
    from .onnxmeta import read_model_bytes

    graph = summarize(read_model_bytes(path), str(path))
    precision = graph.metadata.get("segen.precision", "").strip('"') or graph.precision
    where = providers if precision in ("fp32", "fp16") else [p for p in providers if p == "cpu"]
    return [Candidate(provider, "auto", "file", path) for provider in where]


def record_key(found: Sequence[Candidate]) -> str | None:
    """The key of a model's record: the cache keys of every file it may run (which cover the
    bytes, external data, onnxruntime's version and this CPU)."""
    parts = []
    for path in sorted({c.path for c in found}):
        key = cache.cache_key(path)
        if key is None:
            return None
        parts.append(key)
    return "-".join(parts) if parts else None


def _record_path() -> Path | None:
    folder = cache.cache_dir()
    return None if folder is None else folder / RECORD


def _read_record() -> dict[str, Any]:
    path = _record_path()
    if path is None:
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return {}
    entries = document.get("models")
    return entries if isinstance(entries, dict) else {}


def _write_record(key: str, entry: dict[str, Any]) -> Path | None:
    path = _record_path()
    if path is None:
        return None
    entries = _read_record()
    entries[key] = entry
    document = {"schema": SCHEMA, "models": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    from .files import atomic_write

    atomic_write(path, lambda fh: fh.write(json.dumps(document, indent=1).encode()))
    return path


def best(
    ref: zoo.ModelRef,
    providers: Sequence[str],
    batch: int,
    precision: str = "auto",
    threads: int | None = 1,
) -> tuple[Candidate, float] | None:
    """The fastest candidate this machine timed for `ref` among `providers` (and `precision`
    unless auto), at the timed batch size nearest `batch`, with `threads` per run (None:
    every core) where that was timed, else one thread; None when it was never tuned."""
    entries = _read_record()
    if not entries:
        return None  # never tuned here: no file to hash
    found = candidates(ref, providers)
    key = record_key(found)
    entry = entries.get(key or "")
    if not isinstance(entry, dict):
        return None
    checked = [c for c in _checked(ref, entry.get("checked", [])) if c.provider in providers]
    by_id = {(c.provider, c.file, c.bf16): c for c in [*found, *checked]}
    rows = [r for r in entry.get("timings", []) if isinstance(r, dict)]
    if not rows:
        return None
    nearest = min({int(r["batch"]) for r in rows}, key=lambda b: abs(b - batch))
    rows = [r for r in rows if int(r["batch"]) == nearest]
    wanted = threads or cpu_count()
    rows = [r for r in rows if int(r.get("threads", 1)) == wanted] or [
        r for r in rows if int(r.get("threads", 1)) == 1
    ]
    chosen: tuple[Candidate, float] | None = None
    for row in rows:
        cand = by_id.get((str(row.get("provider")), str(row.get("file")), row.get("precision") == "bf16"))
        if cand is None:
            continue
        if precision != "auto" and cand.precision != precision:
            continue
        ms = float(row["p50_ms"])
        if chosen is None or ms < chosen[1]:
            chosen = (cand, ms)
    return chosen


def _open(cand: Candidate, threads: int, overrides: dict[str, Any]) -> Any:
    from .loading import load

    precision = "bf16" if cand.bf16 else cand.precision
    model = load(cand.path, device=cand.provider, precision=precision, threads=threads, **overrides)
    if model.provider != cand.provider:
        model.close()
        raise ProviderError(f"{cand.path.name}: asked for {cand.provider}, got {model.provider}")
    return model


def time_together(
    found: Sequence[Candidate],
    batches: Sequence[int],
    runs: int,
    warmup: int,
    overrides: dict[str, Any],
    threads: int = 1,
) -> dict[tuple[Candidate, int], float]:
    """p50 milliseconds of one run of each candidate at each batch size with `threads` per
    run (1: as the batch job runs it). The candidates are open at once and take turns, so a
    machine whose speed drifts (a shared VM, another job) slows them alike and the
    comparison stays fair; timed one after the other, a slow minute decided the winner.
    With one thread they take turns call by call. With several, in short blocks whose first
    call is not counted: a session whose pool has just run keeps its threads spinning on the
    cores a moment, which slows the next session's first call (call by call, onnxruntime's
    CPU EP measured fcn-pets' int8 file faster at 2 threads, in blocks its fp32 file was)."""
    from .bench import sample_batch

    block, skip = (1, 0) if threads == 1 else (BLOCK, 1)

    models: list[Any] = []
    try:
        for cand in found:
            models.append(_open(cand, threads, overrides))
        out: dict[tuple[Candidate, int], float] = {}
        for batch in batches:
            samples = [sample_batch(m, batch) for m in models]
            for m, x in zip(models, samples, strict=True):
                for _ in range(warmup):
                    m.run(x)
            times: list[list[float]] = [[] for _ in models]
            for i in range(-(-runs // (block - skip))):
                for k in [*range(i % len(models), len(models)), *range(i % len(models))]:
                    for call in range(block):
                        start = time.perf_counter()
                        models[k].run(samples[k])
                        if call >= skip:
                            times[k].append(time.perf_counter() - start)
            for cand, spent in zip(found, times, strict=True):
                out[cand, batch] = round(float(np.median(spent)) * 1e3, 3)
        return out
    finally:
        for m in models:
            m.close()


def check_siblings(
    ref: zoo.ModelRef,
    providers: Sequence[str],
    found: Sequence[Candidate],
    overrides: dict[str, Any],
    images: Path | None = None,
) -> list[dict[str, Any]]:
    """The sibling precisions that no card has checked on a provider, checked here against
    the fp32 file on the first provider: a generator's images from seeded latents (its
    inputs are exactly those, so no data set is needed), by bench.agreement's PSNR of the
    8-bit images (bench.MIN_PSNR_DB); a segmenter's class ids on up to CHECK_IMAGES of the
    user's own `images` (without them a segmenter's unchecked siblings stay unchecked), by
    the share of pixels that agree (bench.MIN_AGREEMENT). Those within budget on a provider
    become candidates there; each entry holds the file's cache key, so a changed file is
    checked afresh."""
    from .bench import MIN_AGREEMENT, MIN_PSNR_DB, agreement, real_batch, sample_batch

    have = {(c.provider, c.file) for c in found}
    todo = [
        (provider, key, path)
        for provider in providers
        for key, path in ref.files.items()
        if key != "fp32" and (provider, key) not in have
    ]
    if "fp32" not in ref.files or not todo or not providers:
        return []
    checked: list[dict[str, Any]] = []
    with _open(Candidate(providers[0], "fp32", "fp32", ref.files["fp32"]), 1, overrides) as reference:
        generator = reference.info.task == "generate"
        if generator:
            batch, on = sample_batch(reference, CHECK_SAMPLES, seed=1), f"{CHECK_SAMPLES} seeded latents"
        elif images is not None:
            found_batch = real_batch(reference, images, CHECK_IMAGES)
            if found_batch is None:
                raise BadInputError(
                    f"--data {images}: no readable images to check {ref.name}'s precisions on"
                )
            batch, on = found_batch, f"{len(found_batch)} images of {images}"
        else:
            return checked
        for provider, key, path in todo:
            try:
                model = _open(Candidate(provider, key, key, path), 1, overrides)
            except Exception:  # an engine that cannot open this file: simply not a candidate
                continue
            with model:
                got = agreement(model, reference, batch)
            if generator:
                psnr = got["psnr_db"]
                within = psnr is None or psnr >= MIN_PSNR_DB  # None: identical images
            else:
                within = (got["agreement"] or 0.0) >= MIN_AGREEMENT
            checked.append(
                {
                    "provider": provider,
                    "file": key,
                    "key": cache.cache_key(path),
                    **got,
                    "on": on,
                    "within_budget": within,
                }
            )
    return checked


def _checked(ref: zoo.ModelRef, rows: Sequence[Any]) -> list[Candidate]:
    """The candidates a sibling check (a record's "checked" rows) admitted, while their
    files are unchanged."""
    out = []
    for row in rows:
        path = ref.files.get(str(row.get("file"))) if isinstance(row, dict) else None
        if path is not None and row.get("within_budget") is True and row.get("key") == cache.cache_key(path):
            out.append(Candidate(str(row["provider"]), str(row["file"]), str(row["file"]), path))
    return out


def tune(
    ref: zoo.ModelRef,
    providers: Sequence[str],
    batches: Sequence[int] = (1, 8),
    runs: int = 20,
    warmup: int = 3,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[Timing], None] | None = None,
    images: Path | None = None,
) -> tuple[list[Timing], Path | None]:
    """Time every candidate of `ref` on `providers` at each batch size and record them:
    the timings, and the record's path (None when the cache is off). `images`: a folder of
    the user's own images, on which a segmenter's unchecked sibling precisions are checked
    (see check_siblings)."""
    found = candidates(ref, providers)
    key = record_key(found)
    checked = check_siblings(ref, providers, found, overrides or {}, images)
    redone = {(row["provider"], row["file"]) for row in checked}
    before = _read_record().get(key) if key is not None else None
    earlier = before.get("checked", []) if isinstance(before, dict) else []
    checked += [  # a check made before (tune --data) stands until its file changes (see _checked)
        row
        for row in earlier
        if isinstance(row, dict) and (row.get("provider"), row.get("file")) not in redone
    ]
    found = [*found, *_checked(ref, checked)]
    timings = []
    cores = cpu_count()
    # one thread at every batch size (the batch job's lanes), and every core at batch 1
    # (one call at a time, as an application asking for one image's mask runs it)
    plan = [(1, list(batches))] + ([(cores, [1])] if cores > 1 and 1 in batches else [])
    for threads, sizes in plan:
        timed = time_together(found, sizes, runs, warmup, overrides or {}, threads) if found else {}
        for (cand, batch), ms in timed.items():
            timing = Timing(cand.provider, cand.precision, cand.file, batch, ms, threads)
            timings.append(timing)
            if progress is not None:
                progress(timing)
    written = None
    if key is not None and timings:
        entry = {
            "model": ref.name,
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": runs,
            "timings": [asdict(t) for t in timings],
            "checked": checked,
        }
        written = _write_record(key, entry)
    return timings, written
