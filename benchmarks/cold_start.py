"""Wall time of one small job, start to finish, as a user runs it: `segen-edge segment` of
one photo (or `generate -n 1`), a fresh process each time, per model and engine.

    python benchmarks/cold_start.py [--models unet-pets,fcn-pets,unet-membrane,dcgan-mnist]
                                    [--devices auto,cpu,openvino-runtime] [--repeats 5]

The engines take turns run by run (in a seeded random order each round), so a slow spell of
a shared machine falls on all of them; each is run once untimed first, so the caches
(onnxruntime's optimized graph, OpenVINO's IR and compiled blobs) are warm, as they are for
every run after a user's first. Prints the median and the range of the wall times in ms,
and what auto ran. The photo is the first of ../shared/data/pets/images (or --image).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segen_edge import zoo  # noqa: E402
from segen_edge.providers import cpu_name, cpu_providers  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "pets" / "images"


def command(model: str, device: str, image: Path, out: Path) -> list[str]:
    """The CLI call of a one-image job: `generate -n 1` for a generator, else `segment`."""
    common = ["-m", model, "-d", device, "-o", str(out), "--overwrite", "-q"]
    if zoo.resolve(model, "segment").recorded("task") == "generate":
        return [sys.executable, "-m", "segen_edge.cli", "generate", "-n", "1", "--seed", "0", *common]
    return [sys.executable, "-m", "segen_edge.cli", "segment", str(image), *common, "--no-list"]


def run_ms(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return (time.perf_counter() - start) * 1e3


def what_auto_runs(model: str, image: Path, out: Path) -> str:
    args = [a for a in command(model, "auto", image, out) if a != "-q"] + ["-v"]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((x for x in done.stderr.splitlines() if "running" in x), "")
    return line.split("running ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="unet-pets,fcn-pets,unet-membrane,dcgan-mnist")
    parser.add_argument("--devices", default="auto," + ",".join(cpu_providers()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    image = args.image or sorted(PHOTOS.glob("*.jpg"))[0]
    devices = [d for d in args.devices.split(",") if d]
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; one photo: {image.name}; {args.repeats} runs each")
    print(f"{'model':14s} {'device':17s} {'median ms':>9s} {'range':>13s}  auto ran")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for model in args.models.split(","):
            jobs = {d: command(model, d, image, out / d) for d in devices}
            for job in jobs.values():
                run_ms(job)  # warm the caches
            times: dict[str, list[float]] = {d: [] for d in devices}
            for _ in range(args.repeats):
                for i in rng.permutation(len(devices)):
                    times[devices[i]].append(run_ms(jobs[devices[i]]))
            ran = what_auto_runs(model, image, out / "auto") if "auto" in devices else ""
            for device in devices:
                t = np.array(times[device])
                note = ran if device == "auto" else ""
                print(f"{model:14s} {device:17s} {np.median(t):9.0f} {t.min():6.0f}-{t.max():6.0f}  {note}")


if __name__ == "__main__":
    main()
