"""The `segen-edge` command line: each verb parses, calls the library, renders.

One module per verb; common.py holds the options, console, logging, signals and progress
they share. Heavy modules (onnxruntime, numpy, Pillow) are imported inside the verbs, so
`--help` and `--version` are instant.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import SegenError
from . import bench, common, evaluate, generate, models, passthrough, segment, tune


class _Group(TyperGroup):
    """The root group: a bare `--json` becomes `--json -` before any verb parses."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, json_flag(args))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        finally:
            common.teardown()


app = typer.Typer(
    cls=_Group,
    name="segen-edge",
    help="Fast, quantized ONNX inference for image segmentation and generation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command()(segment.segment)
app.command()(generate.generate)
app.command()(bench.bench)
app.command()(tune.tune)
app.command("models")(models.list_models)
app.command()(models.info)
app.command()(evaluate.evaluate)
app.command(context_settings=passthrough.PASSTHROUGH, add_help_option=False)(passthrough.train)
app.command(context_settings=passthrough.PASSTHROUGH, add_help_option=False)(passthrough.export)


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


def json_flag(argv: list[str]) -> list[str]:
    """`--json` alone means JSON on stdout, `--json FILE.json` (or `--json=FILE`) a file:
    a bare --json gets the value '-' (click has no options with optional values)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--json":
            following = argv[i + 1] if i + 1 < len(argv) else ""
            if not following.lower().endswith(".json") and following != "-":
                out.append("-")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: SegenError -> one red line and exit 1; usage errors exit 2."""
    try:
        app(args=argv, standalone_mode=True)
    except SegenError as exc:
        common.err(f"error: {exc}")
        return 1
    except MemoryError:
        common.err("error: out of memory; lower --batch-size or --max-pixels")
        return 1
    except KeyboardInterrupt:
        common.err("segen-edge: interrupted")
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


__all__ = ["app", "main"]

if __name__ == "__main__":
    sys.exit(main())
