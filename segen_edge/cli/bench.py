"""segen-edge bench: latency and throughput per model, precision and batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import SegenError
from ..session import Device
from . import common as c


def bench(
    model: c.ModelsOpt = None,
    device: c.DeviceOpt = Device.auto,
    precision: Annotated[
        str, typer.Option("--precision", "-p", help="auto, all, or a comma list of fp32,fp16,int8,bf16.")
    ] = "auto",
    batch_size: c.BatchSizesOpt = "1,8",
    runs: Annotated[int, typer.Option("--runs", min=1, max=100_000)] = 50,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000)] = 5,
    threads: c.ThreadsOpt = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Images to measure agreement with fp32 on (default: synthetic input)."),
    ] = None,
    as_json: c.JsonOpt = None,
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
    from ..loading import check_threads

    sizes = c.batch_sizes(batch_size)
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
        reference = None
        if "fp32" in ref.files or (ref.explicit is not None and not ref.files):
            reference = c.open_model(spec, None, Device.cpu, c.Precision.fp32, threads, overrides)
        for prec in wanted:
            for size in sizes:
                results.append(
                    _one(spec, prec, size, device, threads, overrides, runs, warmup, reference, data)
                )
    if as_json is not None:
        c.write_json([r.to_json() for r in results], as_json)
        if as_json == "-":
            return
    _render(results)


def _one(
    spec: str,
    precision: str,
    size: int,
    device: Device,
    threads: int | None,
    overrides: dict[str, Any],
    runs: int,
    warmup: int,
    reference: Any,
    data: Path | None,
) -> Any:
    """One row: cold start, warm latency, the stream figure and agreement with fp32."""
    from ..bench import cold_start, measure
    from ..pipeline import batch_threads, lanes_for

    def opener(threads_per_run: int | None = threads) -> Any:
        return c.open_model(spec, None, device, c.Precision(precision), threads_per_run, overrides, size)

    model, cold = cold_start(opener, size)
    lanes = lanes_for(model.provider, None)
    lane_model = opener(batch_threads(None)) if lanes > 1 else model
    c.note(f"segen-edge: bench {model.name} {model.info.precision} batch {size}")
    same = reference is not None and reference.path == model.path and not model.loaded.bf16
    return measure(
        model,
        size,
        runs,
        warmup,
        lane_model,
        lanes,
        cold=cold,
        reference=None if same else reference,
        data=data,
    )


def _quality(r: Any) -> str:
    """Agreement with fp32 beside the speed: pixel agreement, or PSNR for generators."""
    if r.agreement is not None:
        return f"{100 * r.agreement:.2f}% ({r.agreement_on})"
    if r.mse is not None:
        return "identical" if r.psnr_db is None else f"PSNR {r.psnr_db:.1f} dB ({r.agreement_on})"
    return "reference"


def _render(results: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="segen-edge bench")
    columns = ("model", "precision", "provider", "batch", "cold ms", "p50 ms", "p90 ms", "p99 ms",
               "images/s", "stream/s", "vs fp32", "MB")  # fmt: skip
    for col in columns:
        table.add_column(
            col, justify="left" if col in ("model", "precision", "provider", "vs fp32") else "right"
        )
    for r in results:
        table.add_row(
            r.model, r.precision, r.provider, str(r.batch_size),
            "-" if r.cold_start_ms is None else f"{r.cold_start_ms:.0f}",
            f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.images_per_s:.1f}",
            f"{r.stream_images_per_s:.1f}" + (f" ({r.lanes} lanes)" if r.lanes > 1 else ""),
            _quality(r), f"{r.size_mb:.2f}",
        )  # fmt: skip
    c.console().print(table)
