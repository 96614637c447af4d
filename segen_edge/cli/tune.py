"""segen-edge tune: time every provider and precision a model may run in, on this machine,
and record them for `--device auto` / `--precision auto` (see segen_edge/tuning.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import SegenError
from . import common as c


def tune(
    model: c.ModelsOpt = None,
    batch_size: c.BatchSizesOpt = "1,8",
    runs: Annotated[int, typer.Option("--runs", min=3, max=10_000)] = 20,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your images: a segmenter's sibling precisions that no card checked (an int8 file "
            "beside your fp32 one) are checked on them against fp32 (>= 99% of pixels alike) and "
            "timed if they pass.",
        ),
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
    """Time each model on every CPU provider and precision here, and record the fastest.

    One thread per run, as segment and generate run batches, and at batch 1 also every core
    (one call at a time, as an application runs it). Only precisions that passed
    their agreement check on a provider (the export's card, or tune's own: a generator's on
    seeded latents, a segmenter's on --data) are timed there. Afterwards
    --device auto and --precision auto take this machine's fastest instead of the build
    machine's figures; the record lives in the cache folder (tuning.json).
    """
    c.setup(quiet, verbose)
    from .. import tuning, zoo
    from ..providers import cpu_providers

    sizes = c.batch_sizes(batch_size)
    if data is not None and not data.is_dir():
        raise typer.BadParameter(f"{c.printable(data)}: not a folder of images", param_hint="--data")
    overrides = c.description(
        image_size, layout, pixel_scale, pixel_offset, mean, std, class_names, output_kind, latent_size
    )
    specs = model or list(zoo.bundled_models())
    if not specs:
        raise SegenError("no bundled models found; pass --model PATH.onnx")
    providers = cpu_providers()
    rows = []
    for spec in specs:
        ref = zoo.resolve(spec, "segment")
        c.note(f"segen-edge: tune {ref.name} on {', '.join(providers)}")
        timings, record = tuning.tune(ref, providers, sizes, runs, overrides=overrides, images=data)
        if record is None:
            c.err(f"{ref.name}: the cache is off ($SEGEN_EDGE_CACHE), so nothing was recorded")
        for batch, threads in sorted({(t.batch, t.threads) for t in timings}):
            at = [t for t in timings if (t.batch, t.threads) == (batch, threads)]
            fastest = min(at, key=lambda t: t.p50_ms)
            for t in at:
                rows.append({"model": ref.name, **vars(t), "chosen": t is fastest})
    if as_json is not None:
        c.write_json(rows, as_json)
        if as_json == "-":
            return
    _render(rows)


def _render(rows: list[dict[str, object]]) -> None:
    from rich.table import Table

    table = Table(title="segen-edge tune (* = what auto now takes for that batch and threads)")
    for col in ("model", "batch", "threads", "provider", "precision", "file", "p50 ms", ""):
        table.add_column(col, justify="right" if col in ("batch", "threads", "p50 ms") else "left")
    for r in rows:
        table.add_row(
            str(r["model"]), str(r["batch"]), str(r["threads"]), str(r["provider"]), str(r["precision"]),
            str(r["file"]), f"{r['p50_ms']:.2f}", "*" if r["chosen"] else "",
        )  # fmt: skip
    c.console().print(table)
