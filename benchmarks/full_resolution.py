"""Full-resolution segmentation (segen_edge.tiling): tiled throughput and peak memory.

Uses onnxruntime directly on the bundled int8 U-Nets and prints figures; asserts nothing.
  (a) tile mode on a 2048x2048 image made of membrane images side by side: window pixels
      per second through `segment_image(mode="tile")` (decode excluded; windows, uint8 ->
      model values, softmax, Gaussian blend, argmax included) against the model alone
      (session.run on already prepared float32 batches) over the same windows and batches;
  (b) peak RSS (VmHWM) of tile mode on a 48 MP and a 12 MP image made by repeating a
      pets-full photo, each in its own process: segmenting, then also rendering a colour
      mask and an overlay, so the increment over the decoded image can be read off;
  (c) the same for resize mode on the 48 MP image.

    python benchmarks/full_resolution.py                 # about 2-3 minutes on 2 cores
    python benchmarks/full_resolution.py --big 4000x3000 --small 2000x1500 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segen_edge import render  # noqa: E402
from segen_edge.metadata import ModelInfo  # noqa: E402
from segen_edge.onnxmeta import read_metadata  # noqa: E402
from segen_edge.probabilities import make_predictor  # noqa: E402
from segen_edge.tiling import segment_image, tile_grid  # noqa: E402

MODELS = ROOT / "segen_edge" / "models"
DATA = ROOT.parent / "shared" / "data"
MEMBRANE = MODELS / "unet-membrane-int8.onnx"
PETS = MODELS / "unet-pets-int8.onnx"


def load(path: Path) -> tuple[object, ModelInfo]:
    import onnxruntime as ort

    info = ModelInfo.from_props(read_metadata(path), source=str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, info


def runner(session: object):
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x)})[0]  # type: ignore[attr-defined]

    return run


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mosaic(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """A (height, width[, 3]) uint8 image made by repeating one picture (mirrored every
    other copy, so the seams are not sharp edges), filled in place: no temporaries."""
    img = Image.open(path).convert("RGB" if channels == 3 else "L")
    tile = np.asarray(img)
    out = np.empty((*size, *tile.shape[2:]), np.uint8)
    th, tw = tile.shape[:2]
    for i, y in enumerate(range(0, size[0], th)):
        for j, x in enumerate(range(0, size[1], tw)):
            part = tile[:: -1 if i % 2 else 1, :: -1 if j % 2 else 1]
            out[y : y + th, x : x + tw] = part[: size[0] - y, : size[1] - x]
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- (a) throughput ------------------------------------------------------------------------


def throughput(rounds: int, batch: int, overlap: float) -> None:
    session, info = load(MEMBRANE)
    run = runner(session)
    predict = make_predictor(run, info)
    membrane = sorted((DATA / "membrane" / "train" / "image").glob("*.png"))
    tiles = [np.asarray(Image.open(p).convert("L")) for p in membrane[:16]]
    rows = [np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in range(4)]
    image = np.ascontiguousarray(np.concatenate(rows, axis=0))  # 2048x2048 of 16 real images
    tile = info.tile
    grid = tile_grid(image.shape[:2], tile, overlap)
    window_px = grid.count * tile[0] * tile[1]
    # the model alone: the same number of windows in the same batches, inputs prepared
    crops = [image[y : y + tile[0], x : x + tile[1]] for y in range(0, 2048 - tile[0], 300)
             for x in range(0, 2048 - tile[1], 300)]  # fmt: skip
    sizes = [batch] * (grid.count // batch) + ([grid.count % batch] if grid.count % batch else [])
    batches = [
        info.preprocessing.to_model(np.stack([crops[(i + j) % len(crops)] for j in range(n)])[..., None])
        for i, n in enumerate(sizes)
    ]
    run(batches[0])  # warm up
    wall: dict[str, list[float]] = {"model": [], "tiled": [], "stub": []}
    cpu: dict[str, list[float]] = {"model": [], "tiled": [], "stub": []}
    canned = run(batches[0])
    stub = make_predictor(lambda x: canned[: x.shape[0]].copy(), info)  # the tiling's own work

    def timed(key: str, work) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall[key].append(time.perf_counter() - start)
        cpu[key].append(time.process_time() - start_cpu)

    def tiled(p=predict) -> None:
        segment_image(image, p, mode="tile", tile=tile, overlap=overlap, batch_size=batch)

    for _ in range(rounds):
        timed("model", lambda: [run(x) for x in batches])
        timed("tiled", tiled)
        timed("stub", lambda: tiled(stub))
    print(f"(a) unet-membrane-int8, 2048x2048, tile {tile[0]}x{tile[1]}, overlap {overlap}, batch {batch}: "
          f"{grid.count} windows = {window_px / 1e6:.2f} M window pixels; {rounds} alternating rounds")  # fmt: skip
    for label, times in (("wall", wall), ("cpu", cpu)):
        for pick_name, pick in (("best", min), ("median", median)):
            t_model, t_tiled = pick(times["model"]), pick(times["tiled"])
            print(f"    {label:4s} {pick_name:6s} model only {t_model:6.2f} s = {window_px / t_model / 1e6:5.2f} M px/s;  "
                  f"tile mode {t_tiled:6.2f} s = {window_px / t_tiled / 1e6:5.2f} M px/s;  ratio {t_model / t_tiled:.3f}")  # fmt: skip
    overhead = min(wall["stub"])
    t_model = min(wall["model"])
    print(f"    tiling's own work (canned model output): {overhead:.2f} s wall, {min(cpu['stub']):.2f} s CPU "
          f"-> ratio if the model took its best time: {t_model / (t_model + overhead):.3f}")  # fmt: skip
    rounds_text = ", ".join(f"({m:.2f}, {t:.2f})" for m, t in zip(wall["model"], wall["tiled"], strict=True))
    print(f"    wall s round by round (model, tiled): {rounds_text}")


# -- (b), (c) peak memory, one process per case ------------------------------------------


def child(mode: str, size: tuple[int, int], overlap: float, batch: int) -> dict[str, float]:
    """Runs in its own process: build the image, segment, render; peak RSS at each stage,
    measured from the RSS with the model loaded and the image in memory."""
    session, info = load(PETS)
    predict = make_predictor(runner(session), info)
    photo = sorted((DATA / "pets-full" / "images").glob("*.jpg"))[0]
    image = mosaic(photo, size, info.channels)
    warm = info.tile if mode == "tile" else info.image_size  # the runtime's own buffers go into base
    predict(np.zeros((batch if mode == "tile" else 1, *warm, info.channels), np.uint8))
    base = vm_rss_mb()
    reset = reset_peak()
    start = time.perf_counter()
    ids, _ = segment_image(
        image,
        predict,
        mode=mode,
        model_size=info.image_size,
        tile=info.tile,
        overlap=overlap,
        batch_size=batch,
    )
    seconds = time.perf_counter() - start
    segmented = vm_hwm_mb()
    palette = np.asarray(info.palette, np.uint8)
    colour = render.colorize(ids, palette)
    del colour
    over = render.overlay(image, ids, palette, 0.5)
    del over
    render.fractions(ids, len(info.class_names))
    return {
        "image_mb": image.nbytes / 2**20,
        "ids_mb": ids.nbytes / 2**20,
        "base": base,
        "hwm_segment": segmented,
        "hwm_render": vm_hwm_mb(),
        "reset": float(reset),
        "seconds": seconds,
        "windows": tile_grid(size, info.tile, overlap).count if mode == "tile" else 1,
    }


def memory(cases: list[tuple[str, tuple[int, int]]], overlap: float, batch: int) -> None:
    _, info = load(PETS)
    tile = info.tile
    print(f"(b/c) unet-pets-int8, tile {tile[0]}x{tile[1]}, overlap {overlap}, batch {batch}; image = a pets-full "
          "photo repeated; MiB; each case in its own process. base = RSS with the model loaded and run once and "
          "the image in memory; peaks are VmHWM after resetting it there, as an increase over base; peak = absolute")  # fmt: skip
    print(
        "    mode    image        MP  image   base  +segment (ids)  +colour,overlay   peak  seconds  windows"
    )
    for mode, size in cases:
        cmd = [sys.executable, __file__, "--child", mode, f"{size[1]}x{size[0]}",
               "--overlap", str(overlap), "--batch", str(batch)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        note = "" if r["reset"] else "  (VmHWM not reset: peaks include building the image)"
        print(f"    {mode:7s} {size[1]:5d}x{size[0]:<5d} {size[0] * size[1] / 1e6:4.1f} {r['image_mb']:6.0f} {r['base']:6.0f} "
              f"{r['hwm_segment'] - r['base']:9.0f} ({r['ids_mb']:3.0f}) {r['hwm_render'] - r['base']:16.0f} {r['hwm_render']:6.0f} "
              f"{r['seconds']:8.1f} {r['windows']:8d}{note}")  # fmt: skip


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (median printed)")
    parser.add_argument("--batch", type=int, default=4, help="windows per model run")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--big", default="8000x6000", help="WIDTHxHEIGHT of the large image (48 MP)")
    parser.add_argument("--small", default="4000x3000", help="WIDTHxHEIGHT of the smaller image (12 MP)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a, b, c")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], parse_size(args.child[1]), args.overlap, args.batch)
        print(json.dumps(result))
        return
    skip = set(args.skip.split(","))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; onnxruntime CPUExecutionProvider, default threads")
    if "a" not in skip:
        throughput(args.rounds, args.batch, args.overlap)
    cases: list[tuple[str, tuple[int, int]]] = []
    if "b" not in skip:
        cases += [("tile", parse_size(args.small)), ("tile", parse_size(args.big))]
    if "c" not in skip:
        cases += [("resize", parse_size(args.small)), ("resize", parse_size(args.big))]
    if cases:
        memory(cases, args.overlap, args.batch)


if __name__ == "__main__":
    main()
