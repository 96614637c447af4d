"""What every verb shares: options, the console, logging, signals and progress.

Results go to stdout, messages to stderr. Exit codes: 0 success, 1 failure (including a
batch in which some files failed), 2 usage, 128 + signal when interrupted.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import SegenError
from ..session import Device

if TYPE_CHECKING:
    from ..model import Model


class Precision(str, enum.Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    bf16 = "bf16"


class Layout(str, enum.Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"


class OutputKind(str, enum.Enum):
    logits = "logits"
    probs = "probs"
    ids = "ids"


class Mode(str, enum.Enum):
    resize = "resize"
    tile = "tile"
    native = "native"


# -- shared options ---------------------------------------------------------------------------

DESCRIBE = "Describe a model (for ONNX files without segen metadata)"

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Bundled model name (see 'segen-edge models') or ONNX path."),
]
DeviceOpt = Annotated[
    Device,
    typer.Option(
        "--device",
        "-d",
        help="Engine: cuda, then the fastest CPU engine measured (cpu, openvino EP, openvino-runtime).",
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option("--precision", "-p", help="Model precision; auto picks the file measured fastest there."),
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
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Model name or ONNX path (repeatable; default: all bundled)."),
]
BatchSizesOpt = Annotated[str, typer.Option("--batch-size", "-b", help="Comma list, e.g. 1,8.")]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", help="JSON on stdout; --json FILE.json writes it to a file.", show_default=False),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also say what runs where.")]
ImageSizeOpt = Annotated[
    tuple[int, int] | None,
    typer.Option("--image-size", help="HEIGHT WIDTH the model was trained at.", rich_help_panel=DESCRIBE),
]
LayoutOpt = Annotated[
    Layout | None,
    typer.Option(
        "--layout", help="Tensor layout; read from the graph when it says.", rich_help_panel=DESCRIBE
    ),
]
PixelScaleOpt = Annotated[
    float | None,
    typer.Option("--pixel-scale", help="model value = pixel * scale + offset.", rich_help_panel=DESCRIBE),
]
PixelOffsetOpt = Annotated[float | None, typer.Option("--pixel-offset", rich_help_panel=DESCRIBE)]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        "--mean",
        help="Per-channel mean in 0..1, e.g. 0.485,0.456,0.406 (torchvision); with --std.",
        rich_help_panel=DESCRIBE,
    ),
]
StdOpt = Annotated[
    str | None,
    typer.Option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225.", rich_help_panel=DESCRIBE),
]
ClassNamesOpt = Annotated[
    str | None,
    typer.Option("--class-names", help="Comma-separated, one per class.", rich_help_panel=DESCRIBE),
]
OutputKindOpt = Annotated[
    OutputKind | None,
    typer.Option(
        "--output-kind", help="What the graph returns (read from the graph).", rich_help_panel=DESCRIBE
    ),
]
LatentSizeOpt = Annotated[
    int | None,
    typer.Option("--latent-size", min=1, help="A generator's latent size.", rich_help_panel=DESCRIBE),
]


MAX_BENCH_BATCH = 1024


def batch_sizes(text: str) -> list[int]:
    """--batch-size as a comma list (bench, tune): "1,8" -> [1, 8], each 1..MAX_BENCH_BATCH."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected e.g. 1,8", param_hint="--batch-size") from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BENCH_BATCH:
        raise typer.BadParameter(
            f"{text!r}: expected sizes from 1 to {MAX_BENCH_BATCH}, e.g. 1,8", param_hint="--batch-size"
        )
    return sizes


def floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers", param_hint=flag) from None
    if not values:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers", param_hint=flag)
    return values


def names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    found = [n.strip() for n in text.split(",") if n.strip()]
    if not found:
        raise typer.BadParameter(f"{text!r}: expected comma-separated names", param_hint="--class-names")
    return found


def description(
    image_size: tuple[int, int] | None = None,
    layout: Layout | None = None,
    pixel_scale: float | None = None,
    pixel_offset: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    class_names: str | None = None,
    output_kind: OutputKind | None = None,
    latent_size: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The description flags as load() overrides (None: not given)."""
    values: dict[str, Any] = {
        "image_size": image_size,
        "layout": layout.value if layout else None,
        "pixel_scale": pixel_scale,
        "pixel_offset": pixel_offset,
        "mean": floats(mean, "--mean"),
        "std": floats(std, "--std"),
        "class_names": names(class_names),
        "output": output_kind.value if output_kind else None,
        "latent_size": latent_size,
        **more,
    }
    return {k: v for k, v in values.items() if v is not None}


def open_model(
    spec: str | None,
    task: str | None,
    device: Device,
    precision: Precision,
    threads: int | None,
    overrides: dict[str, Any] | None = None,
    batch_size: int = 1,
    runs: int | None = None,
) -> Model:
    """load() with the CLI's options; `batch_size` lets precision auto pick for that batch,
    `runs` (a short job's) lets auto weigh cold starts."""
    from ..loading import load

    return load(
        spec, device=device.value, precision=precision.value, threads=threads, task=task,
        batch_size=batch_size, runs=runs, **(overrides or {}),
    )  # fmt: skip


# -- the console ---------------------------------------------------------------------------------


def one_line(message: str) -> str:
    """A message as one printable line: newlines and carriage returns shown as \\n and \\r,
    bytes that are not UTF-8 (surrogate escapes of file names) as \\udcXX."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def _print_err(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except UnicodeEncodeError:  # a strict (ascii, latin-1) stderr
        print(text.encode("ascii", "backslashreplace").decode("ascii"), file=sys.stderr, flush=True)


def err(message: str) -> None:
    """One line on stderr, red on a terminal, never wrapped, never split by a newline."""
    message = one_line(message)
    red = sys.stderr.isatty()
    _print_err(f"\033[31m{message}\033[0m" if red else message)


def note(message: str) -> None:
    """A message for a person: stderr, unless --quiet."""
    if _verbosity >= 0:
        _print_err(one_line(message))


_verbosity = 0
_stdout_open = True


class _LineHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        prefix = "segen-edge: warning: " if record.levelno >= logging.WARNING else "segen-edge: "
        with contextlib.suppress(Exception):
            _print_err(prefix + one_line(text))


def setup(quiet: bool = False, verbose: bool = False) -> None:
    """Route the library's log to stderr at the verbosity asked for."""
    global _verbosity
    _verbosity = -1 if quiet else (1 if verbose else 0)
    logger = logging.getLogger("segen_edge")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _LineHandler)]
    logger.addHandler(_LineHandler())
    logger.setLevel(logging.ERROR if quiet else (logging.INFO if verbose else logging.WARNING))
    logger.propagate = True  # an embedding application still sees the records
    # numpy's RuntimeWarnings (NaN model outputs, inf in float TIFFs) are the data's, not the
    # user's business: the result says what happened, the warning would only add noise
    warnings.filterwarnings("ignore", category=RuntimeWarning)


def teardown() -> None:
    """Undo setup(): a program that ran a verb in-process keeps its own logging."""
    global _verbosity
    _verbosity = 0
    logger = logging.getLogger("segen_edge")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _LineHandler)]
    logger.setLevel(logging.NOTSET)


def console() -> Any:
    """A stdout console for tables; wide when piped, so columns are never truncated."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)


def printable(path: os.PathLike[str] | str) -> str:
    """A path as text any stdout can print: undecodable bytes escaped, newlines shown."""
    text = os.fsdecode(path)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def emit(line: object) -> None:
    """A result line on stdout. A closed pipe (`| head`) stops the printing, not the job."""
    global _stdout_open
    if not _stdout_open:
        return
    try:
        text = str(line)
        try:
            print(text, flush=True)
        except UnicodeEncodeError:
            print(text.encode("ascii", "backslashreplace").decode("ascii"), flush=True)
    except BrokenPipeError:
        _stdout_open = False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet


def write_json(document: Any, target: str | None, flag: str = "--json") -> None:
    """--json: JSON on stdout ('-' or a bare --json), or atomically to a file."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    # a file name that is not UTF-8 holds lone surrogates: written as \udcXX, a JSON escape
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if target in (None, "-", ""):
        emit(text.rstrip("\n"))
        return
    from ..files import write_text
    from ..plan import check_writable_file

    check_writable_file(Path(target), flag, ".json")  # never over an image, a pipe or a folder
    write_text(Path(target), text)


# -- signals and progress ------------------------------------------------------------------------


ABORT_GRACE_S = 2.0  # after a second Ctrl-C, how long the process may take to unwind


class Stop(threading.Event):
    """Set by SIGINT/SIGTERM; remembers which signal, for the exit code (128 + signal)."""

    signum = 0
    announced = False

    def announce(self) -> None:
        """Say once, from the job's loop, that the job is winding down."""
        if self.is_set() and not self.announced:
            self.announced = True
            note("segen-edge: stopping after the files in flight (Ctrl-C again to abort)")

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def graceful_stop() -> Iterator[Stop]:
    """SIGINT/SIGTERM set an event: the job finishes what is in flight and stops cleanly.

    The handler only sets the flag; the job's loop says that it is stopping. A second
    Ctrl-C interrupts at once (temporary files are removed on the way out), and should a
    native call never return, a watchdog ends the process ABORT_GRACE_S later with exit
    128 + signal: files on disk are whole either way, since every write is atomic.
    """
    stop = Stop()
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            watchdog = threading.Timer(ABORT_GRACE_S, os._exit, (128 + signum,))
            watchdog.daemon = True
            watchdog.start()
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


def stopped(stop: Stop, counts: str) -> None:
    stop.announce()
    note(f"segen-edge: interrupted by signal {stop.signum or signal.SIGINT}; {counts}")
    note("segen-edge: run the same command again to finish the rest")
    raise typer.Exit(stop.exit_code)


class _NoProgress:
    """What progress() gives when stderr is not a terminal: nothing drawn, and rich never
    loaded, which scripts and pipelines notice."""

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


def progress(label: str) -> Any:
    if not sys.stderr.isatty() or _verbosity < 0:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    terminal = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=terminal,
        disable=not terminal.is_terminal,
        transient=True,
    )


def fail(message: str) -> None:
    raise SegenError(message)
