"""segen-edge segment: images in, masks (and renderings) out, mirroring the input tree."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import SegenError
from ..session import Device
from . import common as c

if TYPE_CHECKING:
    from ..plan import OutputPlan
    from ..zoo import ModelRef


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


def segment(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: c.ModelOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (a .png name with one input: that file).")
    ] = Path("segen-out"),
    save: Annotated[
        str,
        typer.Option(
            "--save",
            help="Comma-separated outputs: mask,color,overlay,cutout,cutout-soft (alpha from the kept "
            "classes' probability),binary,prob.",
        ),
    ] = "mask",
    keep: Annotated[
        str | None, typer.Option("--keep", help="Classes kept by cutout, cutout-soft and binary, e.g. pet.")
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Overlay: the mask's weight, 0..1.")] = 0.5,
    mode: Annotated[
        c.Mode | None, typer.Option("--mode", help="resize, tile or native (default: how it was trained).")
    ] = None,
    overlap: Annotated[
        float | None, typer.Option("--overlap", help="tile mode: window overlap in [0, 1) (default 0.25).")
    ] = None,
    keep_aspect: Annotated[
        bool | None, typer.Option("--keep-aspect/--squash", help="resize mode: letterbox, or squash.")
    ] = None,
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Write per-image results as JSON to this file.")
    ] = None,
    as_json: Annotated[
        str | None,
        typer.Option(
            "--json",
            help="The summary as JSON on stdout; --json FILE.json writes it to a file.",
            show_default=False,
        ),
    ] = None,
    list_outputs: Annotated[
        bool | None, typer.Option("--list/--no-list", help="Print each output path (default: when piped).")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into folders.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    device: c.DeviceOpt = Device.auto,
    precision: c.PrecisionOpt = c.Precision.auto,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, max=1024, help="Images (tile mode: windows) per run.")
    ] = 8,
    threads: c.BatchThreadsOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, max=64, help="Batches in flight (default: one per core on the CPU)."
        ),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest image accepted, in pixels.")
    ] = 120_000_000,
    engine: Annotated[
        Engine, typer.Option("--engine", help="local (lanes on this machine) or ray (a Ray cluster).")
    ] = Engine.local,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="ray: auto (a running cluster), ray://HOST:10001, or none: start one here."
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option("--actors", min=1, max=100_000, help="ray: model actors (default: CPUs / K)."),
    ] = None,
    cpus_per_actor: Annotated[
        int,
        typer.Option(
            "--cpus-per-actor", min=1, max=1024, help="ray: CPUs (and onnxruntime threads) per actor."
        ),
    ] = 1,
    image_size: c.ImageSizeOpt = None,
    layout: c.LayoutOpt = None,
    pixel_scale: c.PixelScaleOpt = None,
    pixel_offset: c.PixelOffsetOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    class_names: c.ClassNamesOpt = None,
    output_kind: c.OutputKindOpt = None,
    quiet: c.QuietOpt = False,
    verbose: c.VerboseOpt = False,
) -> None:
    """Segment images; write class-id masks (and colour masks, overlays, cutouts, ...)."""
    c.setup(quiet, verbose)
    from .. import zoo
    from ..jobs import SaveOptions, iter_segment_files, plan_segment_files
    from ..loading import check_threads
    from ..pipeline import batch_threads, lanes_for
    from ..segment import KEEP_KINDS, SAVE_KINDS, Segmenter

    kinds = tuple(k.strip() for k in save.split(",") if k.strip())
    kept = tuple(k.strip() for k in (keep or "").split(",") if k.strip())
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise typer.BadParameter(
            f"{','.join(unknown) or 'nothing'}: expected a comma-separated subset of " + ",".join(SAVE_KINDS),
            param_hint="--save",
        )
    if set(KEEP_KINDS) & set(kinds) and not kept:
        raise typer.BadParameter(
            f"{', '.join(k for k in KEEP_KINDS if k in kinds)} need --keep CLASS, e.g. --keep pet",
            param_hint="--keep",
        )
    if not 0.0 <= alpha <= 1.0:
        raise typer.BadParameter(f"{alpha}: expected a number from 0 to 1, e.g. 0.5", param_hint="--alpha")
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise typer.BadParameter(
            f"{overlap}: expected a fraction in [0, 1), e.g. 0.25", param_hint="--overlap"
        )
    overrides = c.description(
        image_size,
        layout,
        pixel_scale,
        pixel_offset,
        mean,
        std,
        class_names,
        output_kind,
        mode=mode.value if mode and mode.value == "native" else None,
    )
    check_threads(threads)
    # every input and output, before the model is opened and before anything is written
    json_file = as_json if as_json not in (None, "-") else None
    reserved = {"--summary": summary, "--json": json_file}
    if engine is Engine.ray:  # URIs (s3://, gs://, file://) are listed through pyarrow there
        from ..ray import plan_inputs

        plan = plan_inputs(inputs, out, save=kinds, recursive=recursive, reserved=reserved)
    else:
        plan = plan_segment_files(inputs, out, save=kinds, recursive=recursive, reserved=reserved)
    if not plan.total:
        where = " ".join(c.printable(i) for i in inputs)
        raise SegenError(f"no images found in {where}; pass --recursive for subfolders")
    # a short job's runs share the cores, and auto weighs cold starts for it (see _runs)
    ref = zoo.resolve(model, "segment")
    run_mode = mode.value if mode else ref.recorded("mode") or "resize"
    runs = None if engine is Engine.ray else _runs(plan, run_mode, batch_size, ref, overlap)
    threads = batch_threads(threads, runs)
    batch = min(batch_size, plan.total) if run_mode == "resize" else batch_size  # what a run holds
    segmenter = c.open_model(model, "segment", device, precision, threads, overrides, batch, runs=runs)
    assert isinstance(segmenter, Segmenter)
    SaveOptions(kinds, alpha, kept).checked(segmenter.class_names)
    settings = segmenter.settings(
        mode=mode.value if mode else None, overlap=overlap, batch_size=batch_size, keep_aspect=keep_aspect
    )
    show_paths = list_outputs if list_outputs is not None else not sys.stdout.isatty()
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    entries = []
    with c.graceful_stop() as stop:
        options: dict[str, Any] = {
            "save": kinds, "alpha": alpha, "keep": kept, "recursive": recursive, "overwrite": overwrite,
            "batch_size": batch_size, "settings": settings, "max_pixels": max_pixels, "plan": plan,
        }  # fmt: skip
        if engine is Engine.ray:
            from ..ray import iter_segment_ray

            results = iter_segment_ray(
                segmenter, inputs, out, address=address, stop=stop, actors=actors,
                cpus_per_actor=cpus_per_actor, **options,
            )  # fmt: skip
        else:
            results = iter_segment_files(  # refuses stale or foreign outputs before any work
                segmenter, inputs, out, stop=stop, lanes=workers or lanes_for(segmenter.provider, threads),
                **options,
            )  # fmt: skip
        with c.progress("segment") as bar:
            task = bar.add_task("segment", total=plan.total)
            for result in results:
                stop.announce()
                counts[result.status] += 1
                entries.append(result.to_json())
                bar.advance(task)
                if result.status == "failed":
                    c.err(f"error: {result.error}")
                elif result.status == "ok":
                    if result.note:
                        c.note(f"{c.printable(result.name)}: {result.note}")
                    if show_paths and as_json != "-":
                        for path in result.written:
                            c.emit(c.printable(path))
        interrupted = stop.is_set()
    info = segmenter.info
    document = {
        "model": info.name or str(segmenter.path),
        "precision": info.precision,
        "provider": segmenter.provider,
        "mode": settings.mode,
        "class_names": list(info.class_names),
        "counts": counts,
        "interrupted": interrupted,
        "images": sorted(entries, key=lambda e: e["input"]),
    }
    if summary:
        c.write_json(document, str(summary), "--summary")
    if as_json is not None:
        c.write_json(document, as_json)
    done = f"{counts['ok']} segmented, {counts['skipped']} skipped (outputs exist), {counts['failed']} failed"
    if interrupted:
        c.stopped(stop, f"{done}; outputs in {c.printable(out)}")
    c.note(f"segen-edge: {done}; outputs in {c.printable(out)}")
    if counts["failed"]:
        raise typer.Exit(1)


def _runs(plan: OutputPlan, mode: str, batch_size: int, ref: ModelRef, overlap: float | None) -> int | None:
    """How many model runs a short job makes (at most loading.FEW_RUNS), else None: one per
    batch of images in resize mode, one per image in native mode, one per batch of each
    image's windows in tile mode (the sizes read from the files' headers)."""
    from PIL import Image

    from ..files import Source
    from ..loading import FEW_RUNS
    from ..tiling import tile_grid

    if mode != "tile":
        runs = -(-plan.total // batch_size) if mode == "resize" else plan.total
        return runs if runs <= FEW_RUNS else None
    tile, recorded = ref.recorded("tile_size"), ref.recorded("overlap")
    if plan.total > FEW_RUNS or not tile:
        return None
    share = overlap if overlap is not None else recorded if recorded is not None else 0.25
    runs = 0
    for entry in plan.entries:
        source = entry if isinstance(entry, Source) else entry.source
        try:
            with Image.open(source.path) as image:
                width, height = image.size
            runs += -(-tile_grid((height, width), tuple(tile), share).count // batch_size)
        except Exception:  # unreadable here: the job reports it; the count is only a hint
            continue
        if runs > FEW_RUNS:
            return None
    return runs or None
