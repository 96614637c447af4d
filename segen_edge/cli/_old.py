"""The `segen-edge` command line: parse, call the library, render.

Results go to stdout, progress and errors to stderr. Exit codes: 0 success, 1 failure
(including a batch in which some files failed), 2 usage. Heavy modules (onnxruntime,
numpy, Pillow) are imported inside the verbs, so `--help` and `--version` are instant.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import SegenError
from .session import Device

if TYPE_CHECKING:
    from .model import Model

app = typer.Typer(
    name="segen-edge",
    help="Fast, quantized ONNX inference for image segmentation and generation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Precision(str, enum.Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


# -- shared options --------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Bundled model name (see 'segen-edge models') or ONNX path."),
]
DeviceOpt = Annotated[
    Device, typer.Option("--device", "-d", help="Execution provider; auto tries cuda, openvino, cpu.")
]
PrecisionOpt = Annotated[
    Precision, typer.Option("--precision", "-p", help="Model precision; auto suits the provider.")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="onnxruntime intra-op threads (default: every core).")
]
BatchThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="onnxruntime threads per run. Default 1: on the CPU, batches then run side by side, "
        "one per core, which is faster than one batch over every core.",
    ),
]
ImageSizeOpt = Annotated[
    tuple[int, int] | None,
    typer.Option("--image-size", help="HEIGHT WIDTH, for an ONNX file without segen metadata."),
]
PixelScaleOpt = Annotated[
    float | None, typer.Option("--pixel-scale", help="model value = pixel * scale + offset.")
]
PixelOffsetOpt = Annotated[float | None, typer.Option("--pixel-offset")]


def _err(message: str) -> None:
    """One line on stderr, red on a terminal, never wrapped."""
    red = sys.stderr.isatty()
    print(f"\033[31m{message}\033[0m" if red else message, file=sys.stderr, flush=True)


def _console() -> Any:
    """A stdout console for tables; wide when piped, so columns are never truncated."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _overrides(task: str, **values: Any) -> dict[str, Any]:
    """Metadata values given on the command line (for models without segen metadata).

    They replace the file's own values; the verb supplies the task.
    """
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        given |= {"task": task}
        given.setdefault("arch", "custom")
        if "image_size" in given:
            given["image_size"] = list(given["image_size"])
    return given


def _open(
    spec: str | None,
    task: str,
    device: Device,
    precision: Precision,
    threads: int | None,
    overrides: dict[str, Any] | None = None,
) -> Model:
    from .model import open_model

    return open_model(spec, task, device, precision.value, threads, overrides, warn=_note)


class _Stop(threading.Event):
    """Set by SIGINT/SIGTERM; remembers which signal, for the exit code (128 + signal)."""

    signum = 0
    announced = False

    def announce(self) -> None:
        """Say once, from the job's loop, that the job is winding down."""
        if self.is_set() and not self.announced:
            self.announced = True
            _note("segen-edge: stopping after the files in flight (Ctrl-C again to abort)")

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def _graceful_stop() -> Iterator[_Stop]:
    """SIGINT/SIGTERM set an event: the job finishes what is in flight and stops cleanly.

    The handler only sets the flag (printing from a signal handler can re-enter a write to
    stderr); the job's loop says that it is stopping. A second Ctrl-C interrupts at once.
    """
    stop = _Stop()
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread (e.g. a test runner's)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _emit(line: object) -> None:
    """A result line on stdout. A closed pipe (`| head`) stops the printing, not the job."""
    global _stdout_open
    if not _stdout_open:
        return
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _stdout_open = False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet


_stdout_open = True


def _stopped(stop: _Stop, counts: str) -> None:
    stop.announce()
    _note(f"segen-edge: interrupted by signal {stop.signum or signal.SIGINT}; {counts}")
    _note("segen-edge: run the same command again to finish the rest")
    raise typer.Exit(stop.exit_code)


class _NoProgress:
    """What _progress gives when stderr is not a terminal: nothing drawn, and rich (a tenth
    of a second to import) never loaded, which scripts and pipelines notice."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(total: int | None, label: str) -> Any:
    if not sys.stderr.isatty():
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


# -- verbs -----------------------------------------------------------------------------------


@app.command()
def segment(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("segen-out"),
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 8,
    save: Annotated[
        str, typer.Option("--save", help="Comma-separated outputs: mask,color,overlay.")
    ] = "mask",
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Write per-image class fractions as JSON.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into folders.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    threads: BatchThreadsOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Batches in flight, each decoded, run and written by its own thread "
            "(default: one per core on the CPU, 2 on a GPU).",
        ),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest image accepted, in pixels.")
    ] = 120_000_000,
    image_size: ImageSizeOpt = None,
    pixel_scale: PixelScaleOpt = None,
    pixel_offset: PixelOffsetOpt = None,
    class_names: Annotated[
        str | None, typer.Option("--class-names", help="Comma-separated, for a bare ONNX file.")
    ] = None,
) -> None:
    """Segment images; write class-id masks (and colour masks, overlays) mirroring the input tree."""
    from .images import find_images
    from .segment import SAVE_KINDS, OutputPlan

    kinds = [k.strip() for k in save.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise typer.BadParameter(
            f"{','.join(unknown) or 'nothing'}: expected a comma-separated subset of " + ",".join(SAVE_KINDS),
            param_hint="--save",
        )
    names = class_names.split(",") if class_names else None
    overrides = _overrides(
        "segment",
        image_size=image_size,
        pixel_scale=pixel_scale,
        pixel_offset=pixel_offset,
        class_names=names,
        palette=_palette_for(names),
    )
    from .pipeline import batch_threads, lanes_for
    from .segment import Segmenter

    segmenter = _open(model, "segment", device, precision, batch_threads(threads), overrides)

    assert isinstance(segmenter, Segmenter)
    plan = OutputPlan(out, kinds, inputs)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    entries = []
    with _graceful_stop() as stop, _progress(None, "segment") as bar:
        task = bar.add_task("segment", total=None)
        results = segmenter.segment_files(
            find_images(inputs, recursive),
            plan,
            batch_size=batch_size,
            overwrite=overwrite,
            stop=stop,
            lanes=workers or lanes_for(segmenter.provider, threads),
            max_pixels=max_pixels,
        )
        for result in results:
            stop.announce()
            counts[result.status] += 1
            entries.append(result.to_json())
            bar.advance(task)
            if result.status == "failed":
                _err(f"error: {result.error}")
            elif result.status == "ok":
                if result.note:
                    _note(f"{result.source.path}: {result.note}")
                for path in result.outputs:
                    _emit(path)
        interrupted = stop.is_set()
    if summary:
        from .images import write_text

        info = segmenter.info
        document = {
            "model": info.name or str(segmenter.loaded.path),
            "precision": info.precision,
            "provider": segmenter.provider,
            "class_names": list(info.class_names),
            "counts": counts,
            "interrupted": interrupted,
            "images": sorted(entries, key=lambda e: e["input"]),
        }
        write_text(summary, json.dumps(document, indent=2) + "\n")
    done = f"{counts['ok']} segmented, {counts['skipped']} skipped (outputs exist), {counts['failed']} failed"
    if interrupted:
        _stopped(stop, f"{done}; outputs in {out}")
    _note(f"segen-edge: {done}; outputs in {out}")
    if counts["failed"]:
        raise typer.Exit(1)
    if not any(counts.values()):
        raise SegenError(f"no images found in {' '.join(inputs)}; pass --recursive for subfolders")


def _palette_for(names: list[str] | None) -> list[list[int]] | None:
    if not names:
        return None
    from .masks import default_palette

    return [list(c) for c in default_palette(len(names))]


@app.command()
def generate(
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="How many images.")] = 16,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Same seed, same images (default: random).")
    ] = None,
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("segen-out"),
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Also write all images tiled into one PNG.")
    ] = None,
    grid_scale: Annotated[
        int, typer.Option("--grid-scale", min=1, max=16, help="Enlarge the grid N times (nearest).")
    ] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 16,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    threads: BatchThreadsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    image_size: ImageSizeOpt = None,
    latent_size: Annotated[
        int | None, typer.Option("--latent-size", help="For an ONNX file without metadata.")
    ] = None,
    pixel_scale: PixelScaleOpt = None,
    pixel_offset: PixelOffsetOpt = None,
    code: Annotated[
        int | None,
        typer.Option("--code", min=0, help="Only this category of a model trained with an "
                     "InfoGAN code ('segen-edge info' shows it); unsupervised, not a label."),
    ] = None,
) -> None:
    """Generate images from seeded latent vectors; write PNGs (and a grid)."""
    import numpy as np

    from .generate import Generator, make_grid
    from .images import save_image

    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**31)  # type: ignore[operator]
        _note(f"segen-edge: seed {seed} (pass --seed {seed} to get the same images again)")
    overrides = _overrides(
        "generate",
        image_size=image_size,
        latent_size=latent_size,
        pixel_scale=pixel_scale,
        pixel_offset=pixel_offset,
    )
    from .pipeline import batch_threads, lanes_for

    generator = _open(model, "generate", device, precision, batch_threads(threads), overrides)
    assert isinstance(generator, Generator)
    name = generator.info.name or generator.loaded.path.stem
    keep_for_grid = []
    written = skipped = 0
    with _graceful_stop() as stop, _progress(n, "generate") as bar:
        task = bar.add_task("generate", total=n)
        files = generator.generate_files(
            n, seed, out, name, batch_size, overwrite, stop,
            lanes=lanes_for(generator.provider, threads), code=code,
        )
        for count, result in enumerate(files, start=1):
            stop.announce()
            if grid is not None:
                keep_for_grid.append(result.image)
            if result.written:
                written += 1
                _emit(result.path)
            else:
                skipped += 1
            if count % batch_size == 0 or count == n:
                bar.update(task, completed=count)
        interrupted = stop.is_set()
    if grid is not None and keep_for_grid:
        tiles = make_grid(np.stack(keep_for_grid))
        save_image(grid, tiles.repeat(grid_scale, axis=0).repeat(grid_scale, axis=1))
        _emit(grid)
    done = f"{written} written, {skipped} skipped (exist; --overwrite replaces); in {out}"
    if interrupted:
        _stopped(stop, done)
    _note(f"segen-edge: {done}")


@app.command()
def bench(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name or ONNX path (repeatable; default: all)."),
    ] = None,
    device: DeviceOpt = Device.auto,
    precision: Annotated[
        str, typer.Option("--precision", "-p", help="auto, all, or a comma list of fp32,fp16,int8.")
    ] = "auto",
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Comma list.")] = "1,8",
    runs: Annotated[int, typer.Option("--runs", min=1)] = 50,
    warmup: Annotated[int, typer.Option("--warmup", min=0)] = 5,
    threads: ThreadsOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Measure latency (p50/p90/p99) and throughput per model, precision and batch size.

    images/s: one run at a time. stream/s: a stream of batches run the way segment and
    generate run them (on the CPU, one run per core side by side, one thread each).
    """
    from . import zoo
    from .bench import measure
    from .model import open_model
    from .pipeline import batch_threads, lanes_for

    try:
        sizes = [int(s) for s in batch_size.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{batch_size!r}: expected e.g. 1,8", param_hint="--batch-size") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"{batch_size!r}: expected positive sizes", param_hint="--batch-size")
    specs = model or list(zoo.bundled_models())
    if not specs:
        raise SegenError("no bundled models found; pass --model PATH.onnx")
    results = []
    for spec in specs:
        ref = zoo.resolve(spec, "segment")
        if precision in ("all", "auto"):
            wanted = (ref.precisions or ["auto"]) if precision == "all" else ["auto"]
        else:
            wanted = [p.strip() for p in precision.split(",")]
        for prec in wanted:
            loaded = open_model(spec, None, device, prec, threads, warn=_note)
            lanes = lanes_for(loaded.provider, None)
            lane_model = loaded
            if lanes > 1:
                lane_model = open_model(spec, None, device, prec, batch_threads(None), warn=lambda _: None)
            for size in sizes:
                _note(f"segen-edge: bench {ref.name} {loaded.info.precision} batch {size}")
                results.append(measure(loaded, size, runs, warmup, lane_model, lanes))
    _render_bench(results)
    if json_path:
        from .images import write_text

        write_text(json_path, json.dumps([r.to_json() for r in results], indent=2) + "\n")


def _render_bench(results: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="segen-edge bench")
    for col in (
        "model",
        "precision",
        "provider",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "std ms",
        "images/s",
        "stream/s",
        "MB",
    ):
        table.add_column(col, justify="left" if col in ("model", "precision", "provider") else "right")
    for r in results:
        table.add_row(
            r.model,
            r.precision,
            r.provider,
            str(r.batch_size),
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.mean_ms:.2f}",
            f"{r.std_ms:.2f}",
            f"{r.images_per_s:.1f}",
            f"{r.stream_images_per_s:.1f}" + (f" ({r.lanes} lanes)" if r.lanes > 1 else ""),
            f"{r.size_mb:.2f}",
        )
    _console().print(table)


@app.command("models")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the bundled models."""
    from . import zoo

    rows = [_describe(ref) for ref in zoo.bundled_models().values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="bundled models")
    for col in ("name", "task", "arch", "precisions", "input", "classes", "size"):
        table.add_column(col)
    for row in rows:
        if row["task"] == "segment":
            classes = ", ".join(row["class_names"])
        else:
            codes = row.get("card", {}).get("categorical_code")
            classes = f"latent {row['latent_size']}" + (f", code 0-{codes - 1}" if codes else "")
        sizes = ", ".join(f"{p} {mb:.1f} MB" for p, mb in row["file_mb"].items())
        table.add_row(
            row["name"],
            row["task"],
            row["arch"],
            ", ".join(row["precisions"]),
            "x".join(map(str, row["image_size"])) + f"x{row['channels']}",
            classes,
            sizes,
        )
    _console().print(table)


def _describe(ref: Any, precision: str = "auto") -> dict[str, Any]:
    """Metadata of a model reference, read from its ONNX file without a session."""
    from .metadata import ModelInfo
    from .onnxmeta import read_metadata

    _, path = ref.pick(precision, "cpu")
    info = ModelInfo.from_props(read_metadata(path), source=str(path))
    row = info.to_dict()
    row["name"] = info.name or ref.name
    row["path"] = str(path)
    row["precisions"] = {p: str(f) for p, f in ref.files.items()} or {info.precision: str(path)}
    row["file_mb"] = {p: round(Path(f).stat().st_size / 1e6, 2) for p, f in row["precisions"].items()}
    return row


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Bundled model name or ONNX path.")],
    precision: PrecisionOpt = Precision.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one model's metadata and card."""
    from . import zoo

    ref = zoo.resolve(model, "segment")
    row = _describe(ref, precision.value)
    if as_json:
        print(json.dumps(row, indent=2))
        return
    card = row.pop("card", {})
    for key, value in row.items():
        if key != "file_mb":
            print(f"{key:>16}: {json.dumps(value) if not isinstance(value, str) else value}")
    if card:
        print(f"{'card':>16}:")
        print(json.dumps(card, indent=2))


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Bundled model name or ONNX path.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled data folder (default: the card's).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="held-out (the card's stems) or all.")] = "held-out",
    mask_encoding: Annotated[
        str | None, typer.Option("--mask-encoding", help="auto, index, binary, trimap, palette.")
    ] = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 8,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score a segmenter on labelled images (by default the held-out split of its card)."""
    from .evaluate import evaluate as score
    from .evaluate import held_out_pairs
    from .segment import Segmenter

    if split not in ("held-out", "all"):
        raise typer.BadParameter(f"{split!r}: expected held-out or all", param_hint="--split")
    segmenter = _open(model, "segment", device, precision, threads)
    assert isinstance(segmenter, Segmenter)
    card = dict(segmenter.info.card)
    folder = data or (Path(card["data"]) if card.get("data") else None)
    if folder is None:
        raise SegenError(f"{model}: its card names no data folder; pass --data DIR")
    stems = card.get("held_out") if split == "held-out" else None
    if split == "held-out" and not stems:
        raise SegenError(f"{model}: its card lists no held-out stems; pass --split all")
    encoding = mask_encoding or card.get("mask_encoding") or "auto"
    result = score(segmenter, held_out_pairs(str(folder), stems), encoding, batch_size)
    result |= {"model": segmenter.info.name, "precision": segmenter.info.precision, "data": str(folder)}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']} {result['precision']} on {result['images']} images of {folder}")
    for key in ("miou", "mean_dice", "pixel_accuracy"):
        print(f"{key:>16}: {result[key]}")
    for name, iou in result["iou"].items():
        print(f"{'iou ' + name:>16}: {iou}   dice {result['dice'][name]}")


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train a model (unet | fcn | dcgan); needs the 'train' extra. See 'segen-edge train --help'."""
    _dispatch("train", "training", ctx.args)


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def export(ctx: typer.Context) -> None:
    """Export a training run to ONNX fp32/fp16/int8; needs the 'train' extra."""
    _dispatch("export", "export", ctx.args)


def _dispatch(package: str, what: str, args: list[str]) -> None:
    import importlib

    from .errors import MissingExtraError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not errors
    try:
        for dependency in ("tensorflow", "keras", "tf2onnx", "onnx"):
            importlib.import_module(dependency)
        module = importlib.import_module(f"{package}.cli")
    except ImportError as exc:
        raise MissingExtraError(f"segen-edge {package} ({what}; missing {exc.name})", "train") from None
    extra = {"prog": "segen-edge train"} if package == "train" else {}  # so --help reads right
    code = module.main(list(args), **extra)
    raise typer.Exit(int(code or 0))


def _version(value: bool) -> None:
    if value:
        print(f"segen-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Fast, quantized ONNX inference for image segmentation and generation models."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: SegenError -> one red line and exit 1; usage errors exit 2."""
    try:
        app(args=argv, standalone_mode=True)
    except SegenError as exc:
        _err(f"error: {exc}")
        return 1
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
