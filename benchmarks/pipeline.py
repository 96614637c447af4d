"""End-to-end throughput of `segen-edge segment` / `generate` against the model alone.

Runs, in one invocation and on the same machine:
  1. `segen-edge bench` at the chosen batch size: the model-only throughput (images/s);
  2. `segen-edge segment` on a folder of N real JPEGs (decode, resize, inference, PNG
     encode, atomic writes), and `segen-edge generate -n M`;
and prints each one's images/s, the ratio to the model-only figure, and its peak RSS.
Each command runs in its own process so its peak RSS (from wait4) is its own.

    python benchmarks/pipeline.py --images ../shared/data/pets/images --count 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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
        cmd = [
            "segen-edge",
            "bench",
            "-m",
            model,
            "-b",
            str(batch),
            "--runs",
            str(runs),
            "-d",
            device,
            "--json",
            str(out),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        row = json.loads(out.read_text())[0]
        return max(float(row["images_per_s"]), float(row["stream_images_per_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="../shared/data/pets/images")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--generate", type=int, default=5000)
    parser.add_argument("--model", default="unet-pets")
    parser.add_argument("--gen-model", default="dcgan-fashion")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gen-batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[: args.count]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for path in files:
            os.symlink(path.resolve(), folder / path.name)
        ref = model_only(args.model, args.batch_size, 30, args.device)
        wall, rss = timed(
            [
                "segen-edge",
                "segment",
                str(folder),
                "-m",
                args.model,
                "-o",
                str(Path(tmp) / "out"),
                "-b",
                str(args.batch_size),
                "-d",
                args.device,
            ]
        )
        rows.append(("segment", args.model, len(files), args.batch_size, ref, len(files) / wall, rss))
        ref = model_only(args.gen_model, args.gen_batch_size, 30, args.device)
        wall, rss = timed(
            [
                "segen-edge",
                "generate",
                "-n",
                str(args.generate),
                "-m",
                args.gen_model,
                "--seed",
                "0",
                "-o",
                str(Path(tmp) / "gen"),
                "-b",
                str(args.gen_batch_size),
                "-d",
                args.device,
            ]
        )
        rows.append(
            ("generate", args.gen_model, args.generate, args.gen_batch_size, ref, args.generate / wall, rss)
        )
        shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    print(
        f"{'verb':<9} {'model':<14} {'images':>6} {'batch':>5} {'model-only/s':>12} {'end-to-end/s':>12} "
        f"{'ratio':>6} {'peak RSS MB':>11}"
    )
    for verb, model, n, batch, ref, e2e, rss in rows:
        print(
            f"{verb:<9} {model:<14} {n:>6} {batch:>5} {ref:>12.1f} {e2e:>12.1f} "
            f"{e2e / ref:>6.2f} {rss:>11.0f}"
        )
    print("(includes process start and model load; ratio = end-to-end / model-only throughput)")


if __name__ == "__main__":
    main()
