"""segen-edge generate: seeded latents -> PNG files (and a grid)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..session import Device
from . import common as c


def generate(
    n: Annotated[int, typer.Option("-n", "--count", min=1, max=10_000_000, help="How many images.")] = 16,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Same seed, same images (default: random).")
    ] = None,
    model: c.ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("segen-out"),
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Also write all images tiled into one PNG.")
    ] = None,
    grid_scale: Annotated[
        int, typer.Option("--grid-scale", min=1, max=16, help="Enlarge the grid N times (nearest).")
    ] = 1,
    code: Annotated[
        int | None,
        typer.Option(
            "--code",
            min=0,
            help="Only this category of a model trained with an "
            "InfoGAN code ('segen-edge info' shows it); unsupervised, not a label.",
        ),
    ] = None,
    list_outputs: Annotated[
        bool | None, typer.Option("--list/--no-list", help="Print each output path (default: when piped).")
    ] = None,
    as_json: Annotated[
        str | None,
        typer.Option(
            "--json",
            help="A summary (seed, files, grid) as JSON on stdout; --json FILE.json writes it to a file.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=1024)] = 16,
    device: c.DeviceOpt = Device.auto,
    precision: c.PrecisionOpt = c.Precision.auto,
    threads: c.BatchThreadsOpt = None,
    image_size: c.ImageSizeOpt = None,
    layout: c.LayoutOpt = None,
    latent_size: c.LatentSizeOpt = None,
    pixel_scale: c.PixelScaleOpt = None,
    pixel_offset: c.PixelOffsetOpt = None,
    quiet: c.QuietOpt = False,
    verbose: c.VerboseOpt = False,
) -> None:
    """Generate images from seeded latent vectors; write PNGs (and a grid)."""
    c.setup(quiet, verbose)
    import numpy as np

    from ..files import save_image
    from ..generate import MAX_GRID_PIXELS, Generator, check_seed, fresh_seed, make_grid
    from ..generate_job import check_generate_outputs, generate_files, generated_path
    from ..loading import check_threads
    from ..pipeline import batch_threads, lanes_for
    from ..plan import PlanError, check_writable_file

    seed = check_seed(seed)  # one line with the limits, before the model is opened
    check_threads(threads)
    if grid is not None:
        check_writable_file(grid, "--grid", ".png")
        _check_grid_target(grid, overwrite)
    overrides = c.description(image_size, layout, pixel_scale, pixel_offset, latent_size=latent_size)
    runs = -(-n // batch_size)
    threads = batch_threads(threads, runs)
    generator = c.open_model(
        model, "generate", device, precision, threads, overrides, min(batch_size, n), runs=runs
    )  # fmt: skip
    assert isinstance(generator, Generator)
    generator.check_code(code)
    if grid is not None:
        cell = (generator.info.height + 2) * (generator.info.width + 2) * grid_scale * grid_scale
        if n * cell > MAX_GRID_PIXELS:
            raise typer.BadParameter(
                f"-n {n} images make a grid of about {n * cell:,} pixels, over {MAX_GRID_PIXELS:,}; "
                "lower -n or --grid-scale, or leave --grid out",
                param_hint="--grid",
            )
    if seed is None:
        seed = fresh_seed()
        c.note(f"segen-edge: seed {seed} (pass --seed {seed} to get the same images again)")
    prefix = f"{generator.name}-s{seed}" if code is None else f"{generator.name}-c{code}-s{seed}"
    check_generate_outputs(out, prefix, n)  # a folder where an image goes: refused, nothing written
    if grid is not None and grid.parent.resolve() == out.resolve() and grid.name.startswith(prefix + "-"):
        index = grid.stem[len(prefix) + 1 :]
        if index.isdigit() and int(index) < n and generated_path(out, prefix, int(index)) == out / grid.name:
            raise PlanError(
                f"--grid {c.printable(grid)}: is where generated image {int(index)} goes; pick another name"
            )
    show_paths = list_outputs if list_outputs is not None else not sys.stdout.isatty()
    if as_json == "-":
        show_paths = False  # stdout carries the JSON alone
    if as_json not in (None, "-"):
        check_writable_file(Path(as_json), "--json", ".json")
    keep_for_grid = []
    listed: list[dict[str, object]] = []
    written = skipped = 0
    with c.graceful_stop() as stop, c.progress("generate") as bar:
        task = bar.add_task("generate", total=n)
        files = generate_files(
            generator,
            n,
            out,
            seed=seed,
            code=code,
            batch_size=batch_size,
            overwrite=overwrite,
            lanes=lanes_for(generator.provider, threads),
            stop=stop,
        )
        for count, result in enumerate(files, start=1):
            stop.announce()
            if grid is not None:
                keep_for_grid.append(result.image)
            listed.append({"path": c.printable(result.path), "written": result.written})
            if result.written:
                written += 1
                if show_paths:
                    c.emit(c.printable(result.path))
            else:
                skipped += 1
            if count % batch_size == 0 or count == n:
                bar.update(task, completed=count)
        interrupted = stop.is_set()
    grid_written = False
    if grid is not None and keep_for_grid and not (grid.exists() and not overwrite):
        save_image(grid, make_grid(np.stack(keep_for_grid), scale=grid_scale))
        grid_written = True
        if show_paths:
            c.emit(c.printable(grid))
    if as_json is not None:
        document = {
            "model": generator.info.name or str(generator.path),
            "seed": seed,
            "code": code,
            "size_hw": [generator.info.height, generator.info.width],
            "counts": {"written": written, "skipped": skipped},
            "interrupted": interrupted,
            "files": listed,
            "grid": {"path": c.printable(grid), "written": grid_written} if grid is not None else None,
        }
        c.write_json(document, as_json)
    done = f"{written} written, {skipped} skipped (exist; --overwrite replaces); in {c.printable(out)}"
    if interrupted:
        c.stopped(stop, done)
    c.note(f"segen-edge: {done}")


def _check_grid_target(grid: Path, overwrite: bool) -> None:
    """--grid follows the rule of every output: never replace a file without --overwrite."""
    if grid.is_dir():
        raise typer.BadParameter(f"{c.printable(grid)}: is a folder; name a .png file", param_hint="--grid")
    if grid.exists() and not overwrite:
        c.note(f"segen-edge: {c.printable(grid)} exists; kept (--overwrite replaces it)")
