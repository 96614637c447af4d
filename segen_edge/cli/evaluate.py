"""segen-edge evaluate: score a segmenter on labelled images at their own size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..session import Device
from . import common as c


def evaluate(
    model: Annotated[str, typer.Argument(help="Bundled model name or ONNX path.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled data folder (default: the card's).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="held-out (the card's stems) or all.")] = "held-out",
    mask_encoding: Annotated[
        str | None, typer.Option("--mask-encoding", help="auto, index, binary, trimap, palette.")
    ] = None,
    mode: Annotated[c.Mode | None, typer.Option("--mode", help="resize, tile or native.")] = None,
    overlap: Annotated[float | None, typer.Option("--overlap", help="tile mode overlap in [0, 1).")] = None,
    ignore_index: Annotated[
        list[int] | None, typer.Option("--ignore-index", help="Label skipped in scoring (repeatable; 255).")
    ] = None,
    valid_masks: Annotated[
        Path | None, typer.Option("--valid-masks", help="Folder of masks: score only their non-zero pixels.")
    ] = None,
    device: c.DeviceOpt = Device.auto,
    precision: c.PrecisionOpt = c.Precision.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=1024)] = 8,
    threads: c.ThreadsOpt = None,
    as_json: c.JsonOpt = None,
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
    """Score a segmenter on labelled images (by default the held-out split of its card)."""
    c.setup(quiet, verbose)
    from ..evaluate import evaluate as score
    from ..evaluate import find_data, held_out_pairs
    from ..segment import RunSettings, Segmenter

    if split not in ("held-out", "all"):
        raise typer.BadParameter(f"{split!r}: expected held-out or all", param_hint="--split")
    overrides = c.description(
        image_size, layout, pixel_scale, pixel_offset, mean, std, class_names, output_kind
    )
    segmenter = c.open_model(model, "segment", device, precision, threads, overrides)
    assert isinstance(segmenter, Segmenter)
    card = dict(segmenter.info.card)
    folder = data or find_data(card.get("data"), model)
    stems = card.get("held_out") if split == "held-out" else None
    if split == "held-out" and not stems:
        raise typer.BadParameter(
            f"{model}: its card lists no held-out stems; pass --split all", param_hint="--split"
        )
    encoding = mask_encoding or card.get("mask_encoding") or "auto"
    ignore = ignore_index if ignore_index else card.get("ignore_index", 255)
    settings = RunSettings(mode=mode.value if mode else None, overlap=overlap)
    result = score(
        segmenter,
        held_out_pairs(folder, stems),
        encoding,
        settings=settings,
        ignore_index=ignore,
        valid_masks=valid_masks,
        batch_size=batch_size,
    )
    result |= {"model": segmenter.info.name, "precision": segmenter.info.precision, "data": str(folder)}
    if as_json is not None:
        c.write_json(result, as_json)
        if as_json == "-":
            return
    c.emit(
        f"{result['model']} {result['precision']} on {result['images']} images of {folder} "
        f"at their own size ({result['mode']} mode)"
    )
    for key in ("miou", "mean_dice", "pixel_accuracy"):
        c.emit(f"{key:>16}: {result[key]}")
    for name, iou in result["iou"].items():
        c.emit(f"{'iou ' + name:>16}: {iou}   dice {result['dice'][name]}")
