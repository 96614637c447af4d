"""segen-edge bench: latency and throughput per model, precision and batch size."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import SegenError
from ..session import Device
from . import common as c

MAX_BENCH_BATCH = 1024


def bench(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name or ONNX path (repeatable; default: all bundled)."),
    ] = None,
    device: c.DeviceOpt = Device.auto,
    precision: Annotated[
        str, typer.Option("--precision", "-p", help="auto, all, or a comma list of fp32,fp16,int8,bf16.")
    ] = "auto",
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Comma list, e.g. 1,8.")] = "1,8",
    runs: Annotated[int, typer.Option("--runs", min=1, max=100_000)] = 50,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000)] = 5,
    threads: c.ThreadsOpt = None,
    as_json: Annotated[
        str | None,
        typer.Option(
            "--json", help="JSON on stdout; --json FILE.json writes it to a file.", show_default=False
        ),
    ] = None,
    image_size: c.ImageSizeOpt = None,
    layout: c.LayoutOpt = None,
    pixel_scale: c.PixelScaleOpt = None,
    pixel_offset: c.PixelOffsetOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    class_names: c.ClassNamesOpt = None,
    output_kind: c.OutputKindOpt = None,
    latent_size: c.LatentSizeOpt = None,
    quiet: c.QuietOpt = False,
    verbose: c.VerboseOpt = False,
) -> None:
    """Measure latency (p50/p90/p99) and throughput per model, precision and batch size.

    images/s: one run at a time. stream/s: a stream of batches run the way segment and
    generate run them (on the CPU, one run per core side by side, one thread each).
    """
    c.setup(quiet, verbose)
    from .. import zoo
    from ..bench import measure
    from ..loading import check_threads
    from ..pipeline import batch_threads, lanes_for

    sizes = _sizes(batch_size)
    check_threads(threads)
    overrides = c.description(
        image_size, layout, pixel_scale, pixel_offset, mean, std, class_names, output_kind, latent_size
    )
    specs = model or list(zoo.bundled_models())
    if not specs:
        raise SegenError("no bundled models found; pass --model PATH.onnx")
    results = []
    for spec in specs:
        ref = zoo.resolve(spec, "segment")
        if precision in ("all", "auto"):
            wanted = (ref.precisions or ["auto"]) if precision == "all" else ["auto"]
        else:
            wanted = [p.strip() for p in precision.split(",") if p.strip()]
        for prec in wanted:
            loaded = c.open_model(spec, None, device, c.Precision(prec), threads, overrides)
            lanes = lanes_for(loaded.provider, None)
            lane_model = loaded
            if lanes > 1:
                lane_model = c.open_model(
                    spec, None, device, c.Precision(prec), batch_threads(None), overrides
                )
            for size in sizes:
                c.note(f"segen-edge: bench {ref.name} {loaded.info.precision} batch {size}")
                results.append(measure(loaded, size, runs, warmup, lane_model, lanes))
    if as_json is not None:
        c.write_json([r.to_json() for r in results], as_json)
        if as_json == "-":
            return
    _render(results)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected e.g. 1,8", param_hint="--batch-size") from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BENCH_BATCH:
        raise typer.BadParameter(
            f"{text!r}: expected sizes from 1 to {MAX_BENCH_BATCH}, e.g. 1,8", param_hint="--batch-size"
        )
    return sizes


def _render(results: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="segen-edge bench")
    columns = (
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
    )
    for col in columns:
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
    c.console().print(table)
