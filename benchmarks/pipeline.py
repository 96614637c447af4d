"""End-to-end throughput of `segen-edge segment` / `generate` against the model alone.

Runs, in one invocation and on the same machine, `--rounds` times in turn (so a slow spell
of a shared machine hits every figure alike; medians are printed):
  1. `segen-edge bench` at the chosen batch size: the model-only throughput (images/s), the
     better of one run at a time over every core and a stream of batches in lanes;
  2. `segen-edge segment` on a folder of N real JPEGs (decode, resize, inference, PNG
     encode, atomic writes), and on the first `--small` of them, so the fixed start-up
     (Python imports, model load) can be told apart from the steady state:
     steady = (N - small) / (t_N - t_small);
  3. `segen-edge generate -n M` and `-n small` the same way;
  4. the disk floor: writing the same number of PNG files (the first input's size for
     masks, 32x32 for generated images) atomically and nothing else, which bounds both
     commands from below wherever creating a file costs more than what goes into it.
Each command runs in its own process so its peak RSS (from wait4) is its own.

    python benchmarks/pipeline.py --images ../shared/data/pets/images --count 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segen_edge.files import save_image  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def model_only(model: str, batch: int, runs: int, device: str) -> float:
    """The model alone at this batch size: the better of one run at a time over every core
    and a stream of batches in lanes (what segment/generate do), so the ratio is strict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = ["segen-edge", "bench", "-m", model, "-b", str(batch), "--runs", str(runs), "-d", device]
        subprocess.run([*cmd, "--json", str(out)], check=True, capture_output=True)
        row = json.loads(out.read_text())[0]
        return max(float(row["images_per_s"]), float(row["stream_images_per_s"]))


def disk_floor(count: int, size: tuple[int, int], workers: int, noise: bool) -> float:
    """Seconds to write `count` PNGs of `size` atomically with `workers` threads, nothing
    else: noise for generated images, flat regions (like a mask: a blob on a background)
    otherwise, so the PNG encoder does as much work as it does on the real outputs."""
    height, width = size
    if noise:
        image = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    else:
        rows, cols = np.ogrid[:height, :width]
        blob = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (min(size) / 3) ** 2
        image = np.where(blob, 0, 1).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        os.sync()
        start = time.perf_counter()
        list(pool.map(lambda i: save_image(Path(tmp) / f"{i:05d}.png", image), range(count)))
        return time.perf_counter() - start


class Row:
    def __init__(self, verb: str, model: str, n: int, batch: int) -> None:
        self.verb, self.model, self.n, self.batch = verb, model, n, batch
        self.ref: list[float] = []
        self.whole: list[float] = []
        self.small: list[float] = []
        self.rss: dict[str, list[float]] = {"small": [], "whole": []}
        self.floor: list[float] = []

    def line(self, small: int) -> str:
        ref, whole, rest = median(self.ref), median(self.whole), median(self.whole) - median(self.small)
        steady = (self.n - small) / rest
        floor = f"{median(self.floor):>9.2f}" if self.floor else f"{'-':>9}"
        # the model and the file writes share the same cores: at best their times add up
        bound = 1.0 / (1.0 / ref + median(self.floor) / self.n) if self.floor else ref
        return (
            f"{self.verb:<9} {self.model:<14} {self.n:>6} {self.batch:>5} {ref:>10.1f} "
            f"{self.n / whole:>10.1f} {self.n / whole / ref:>6.2f} {steady:>10.1f} {steady / ref:>6.2f} "
            f"{bound:>8.1f} {steady / bound:>6.2f} "
            f"{median(self.small):>8.2f} {floor} {max(self.rss['small']):>5.0f} / {max(self.rss['whole']):<5.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "pets" / "images"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--generate", type=int, default=5000)
    parser.add_argument("--small", type=int, default=16, help="the short run that measures start-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="unet-pets")
    parser.add_argument("--gen-model", default="dcgan-fashion")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gen-batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[: args.count]
    if len(files) <= args.small:
        sys.exit(f"{args.images}: {len(files)} JPEGs; need more than --small {args.small}")
    seg = Row("segment", args.model, len(files), args.batch_size)
    with Image.open(files[0]) as first:
        mask_size = (first.height, first.width)  # the masks are written at the input's size
    gen = Row("generate", args.gen_model, args.generate, args.gen_batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for n in (len(files), args.small):
            folders[n] = Path(tmp) / f"in{n}"
            folders[n].mkdir()
            for path in files[:n]:
                os.symlink(path.resolve(), folders[n] / path.name)

        def run(row: Row, cmd: Callable[[int, Path], list[str]], small: int) -> None:
            for n, key in ((row.n, "whole"), (small, "small")):
                out = Path(tempfile.mkdtemp(dir=tmp))
                os.sync()  # earlier runs' writeback must not slow this one's file creation
                wall, rss = timed(cmd(n, out))
                (row.whole if key == "whole" else row.small).append(wall)
                row.rss[key].append(rss)

        common = ["-d", args.device]
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            seg.ref.append(model_only(args.model, args.batch_size, 30, args.device))
            run(
                seg,
                lambda n, out: [
                    "segen-edge",
                    "segment",
                    str(folders[n]),
                    "-m",
                    args.model,
                    "-o",
                    str(out),
                    "-b",
                    str(args.batch_size),
                    *common,
                ],
                args.small,
            )
            seg.floor.append(disk_floor(len(files), mask_size, 2, noise=False))
            gen.ref.append(model_only(args.gen_model, args.gen_batch_size, 200, args.device))
            run(
                gen,
                lambda n, out: [
                    "segen-edge",
                    "generate",
                    "-n",
                    str(n),
                    "-m",
                    args.gen_model,
                    "--seed",
                    "0",
                    "-o",
                    str(out),
                    "-b",
                    str(args.gen_batch_size),
                    *common,
                ],
                args.small,
            )
            gen.floor.append(disk_floor(args.generate, (32, 32), 2, noise=True))
    print(
        f"{'verb':<9} {'model':<14} {'images':>6} {'batch':>5} {'model/s':>10} {'whole/s':>10} {'ratio':>6} "
        f"{'steady/s':>10} {'ratio':>6} {'bound/s':>8} {'ratio':>6} {'start s':>8} {'disk s':>9} "
        f"{'peak RSS MB':>13}"
    )
    for row in (seg, gen):
        print(row.line(args.small))
    print(
        "model/s: model alone (segen-edge bench, the better of sequential and lanes); whole/s: the whole\n"
        "command (process start, model load, every file); steady/s: (N - small) / (t_N - t_small),\n"
        "start-up taken out; start s: the run on --small inputs; disk s: writing the same number of\n"
        f"PNGs and nothing else (2 threads); bound/s: 1 / (1/model + disk s/N), the model and the\n"
        "file writes on the same cores one after the other (steady / bound: what the pipeline adds\n"
        f"beyond both); medians of {args.rounds} interleaved rounds; peak RSS: the largest of the\n"
        "--small runs / of the full runs (equal when memory stays flat)."
    )


if __name__ == "__main__":
    main()
