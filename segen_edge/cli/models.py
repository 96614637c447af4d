"""segen-edge models and info: what is bundled, and what any ONNX file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c


def list_models(
    as_json: c.JsonOpt = None,
    quiet: c.QuietOpt = False,
    verbose: c.VerboseOpt = False,
) -> None:
    """List the bundled models."""
    c.setup(quiet, verbose)
    from .. import zoo

    rows = [_bundled_row(ref) for ref in zoo.bundled_models().values()]
    if as_json is not None:
        c.write_json(rows, as_json)
        if as_json == "-":
            return
    from rich.table import Table

    table = Table(title="bundled models")
    for col in ("name", "task", "arch", "precisions", "input", "mode", "classes", "size"):
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
            row["mode"] if row["task"] == "segment" else "-",
            classes,
            sizes,
        )
    c.console().print(table)


def _bundled_row(ref: Any, precision: str = "auto") -> dict[str, Any]:
    from ..graph import summarize_file
    from ..metadata import ModelInfo

    _, path = ref.pick(precision, "cpu")
    info = ModelInfo.from_props(summarize_file(path).metadata, source=str(path))
    row = info.to_dict()
    row["name"] = info.name or ref.name
    row["path"] = str(path)
    row["precisions"] = {p: str(f) for p, f in ref.files.items()} or {info.precision: str(path)}
    row["file_mb"] = {p: round(Path(f).stat().st_size / 1e6, 2) for p, f in row["precisions"].items()}
    return row


def info(
    model: Annotated[str, typer.Argument(help="Bundled model name or any ONNX file.")],
    precision: c.PrecisionOpt = c.Precision.auto,
    card: Annotated[bool, typer.Option("--card", help="Also print the full model card.")] = False,
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
    """Describe a model: its graph's inputs and outputs, opset, producer, size, precision,
    its segen metadata, and what each verb still needs to run it."""
    c.setup(quiet, verbose)
    from .. import zoo
    from ..errors import SegenError
    from ..graph import infer_description, summarize_file
    from ..loading import describe

    ref = zoo.resolve(model, "segment")
    _, path = ref.pick("auto" if precision.value == "bf16" else precision.value, "cpu")
    graph = summarize_file(path)
    overrides = c.description(
        image_size, layout, pixel_scale, pixel_offset, mean, std, class_names, output_kind, latent_size
    )
    has_meta = any(k.startswith("segen.") for k in graph.metadata)
    verbs: dict[str, str] = {}
    described: dict[str, Any] | None = None
    inferred = infer_description(graph).get("task")
    for verb in ("segment", "generate"):
        if not has_meta and inferred and inferred != verb:
            batch = "an image" if inferred == "segment" else "a latent"
            verbs[verb] = f"no: a {inferred} model (its input is {batch} batch)"
            continue
        try:
            found = describe(graph, {"task": verb, **overrides} if not has_meta else overrides, str(path))
        except SegenError as exc:
            verbs[verb] = "needs: " + str(exc).split(": ", 1)[-1]
            continue
        if found.task != verb:
            verbs[verb] = f"no: a {found.task} model"
            continue
        verbs[verb] = "ready" if has_meta or overrides else "ready with assumed values (see the warning)"
        described = found.to_dict()
    document = {
        "file": graph.to_json(),
        "precisions": {p: str(f) for p, f in ref.files.items()} or {graph.precision: str(path)},
        "segen_keys": sorted(k for k in graph.metadata if k.startswith("segen.")),
        "other_metadata": {k: v for k, v in graph.metadata.items() if not k.startswith("segen.")},
        "description": described,
        "verbs": verbs,
    }
    if as_json is not None:
        c.write_json(document, as_json)
        if as_json == "-":
            return
    _print_summary(document, card)


def _print_summary(doc: dict[str, Any], show_card: bool) -> None:
    file, desc = doc["file"], doc["description"] or {}

    def line(key: str, value: object) -> None:
        c.emit(f"{key:>14}: {value}")

    def shape(t: dict[str, Any]) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in t["shape"])
        return f"{t['name']} [{dims}] {t['dtype']}"

    line("file", c.printable(file["path"]))
    if desc.get("name"):
        line("model", f"{desc['name']} ({desc.get('task')}, {desc.get('arch')}, {desc.get('precision')})")
    line(
        "size",
        f"{file['size_bytes'] / 1e6:.2f} MB"
        + (f" + external data {file['external_data']}" if file["external_data"] else ""),
    )
    line("producer", file["producer"] or "-")
    line("opsets", ", ".join(f"{k} {v}" for k, v in file["opsets"].items()) or "-")
    for t in file["inputs"]:
        line("input", shape(t))
    for t in file["outputs"]:
        line("output", shape(t))
    line("precision", f"{file['precision_guess']} (from the graph)")
    if desc.get("task") == "segment":
        line("classes", ", ".join(desc["class_names"]))
        pre = (
            f"mean {desc['mean']} std {desc['std']}"
            if desc.get("mean")
            else (f"pixel * {desc['pixel_scale']:.6g} + {desc['pixel_offset']:.6g}")
        )
        line(
            "input means",
            f"{desc['layout']} {desc['image_size'][0]}x{desc['image_size'][1]}x{desc['channels']}, {pre}",
        )
        tile = desc.get("tile_size") or desc["image_size"]
        mode = desc["mode"] + (
            f" ({tile[0]}x{tile[1]} windows, overlap {desc['overlap']})" if desc["mode"] == "tile" else ""
        )
        line("runs as", f"{mode}; outputs {desc['output']}")
    elif desc.get("task") == "generate":
        codes = (desc.get("card") or {}).get("categorical_code")
        line("latent", f"{desc['latent_size']}" + (f", InfoGAN code 0-{codes - 1} (--code)" if codes else ""))
    line("segen keys", ", ".join(k.removeprefix("segen.") for k in doc["segen_keys"]) or "none")
    for verb, state in doc["verbs"].items():
        line(verb, state)
    if show_card:
        c.emit(json.dumps((doc["description"] or {}).get("card", {}), indent=2))
