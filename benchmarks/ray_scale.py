"""The Ray engine against the local lanes on pets images, and the driver's memory in input count.

    python benchmarks/ray_scale.py --count 2000           # throughput, overhead, driver RSS
    python benchmarks/ray_scale.py --count 300 --rss 1000 10000

Inputs are symlinks to /work/shared/data/pets/images (repeated when there are fewer), in a
temporary folder. Throughput: the same model, settings and batch size through
jobs.iter_segment_files (lanes) and segen_edge.ray.iter_segment_ray on a local Ray with
--cpus CPUs and --actors actors; the Ray figure is given whole (actor start included) and
from its first result on (steady state). Driver RSS: a fresh process per count plans the
run and puts the listing in the object store (segen_edge.ray.prepare: listing and planning
only, no model runs; SEGEN_RSS_RUN=1 also runs it); its peak RSS is read from getrusage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("/work/shared/data/pets/images")


def make_inputs(folder: Path, count: int) -> Path:
    images = sorted(p for p in DATA.iterdir() if p.suffix.lower() == ".jpg")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = images[i % len(images)]
        (folder / f"{i:06d}_{src.name}").symlink_to(src)
    return folder


def throughput(args: argparse.Namespace, root: Path) -> dict[str, float]:
    import ray

    import segen_edge
    from segen_edge.jobs import iter_segment_files
    from segen_edge.ray import iter_segment_ray

    inputs = make_inputs(root / "in", args.count)
    seg = segen_edge.load_segmenter(args.model, threads=1)
    start = time.perf_counter()
    local = list(iter_segment_files(seg, [str(inputs)], root / "local", batch_size=args.batch_size))
    local_s = time.perf_counter() - start
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    first = None
    results = []
    for result in iter_segment_ray(
        args.model, [str(inputs)], root / "ray", actors=args.actors, batch_size=args.batch_size
    ):
        first = first or time.perf_counter()
        results.append(result)
    ray_s = time.perf_counter() - start
    steady_s = time.perf_counter() - (first or start)
    ray.shutdown()
    same = all(
        (root / "local" / p.name).read_bytes() == (root / "ray" / p.name).read_bytes()
        for p in (root / "local").glob("*.png")
    )
    n = args.count
    return {
        "images": n,
        "local_ok": sum(r.status == "ok" for r in local),
        "ray_ok": sum(r.status == "ok" for r in results),
        "local_img_s": n / local_s,
        "ray_img_s": n / ray_s,
        "ray_steady_img_s": (n - 1) / steady_s if steady_s > 0 else float("nan"),
        "ray_start_s": ray_s - steady_s,
        "overhead_ms_per_image": (ray_s - local_s) / n * 1000,
        "steady_overhead_ms_per_image": (steady_s - local_s) / n * 1000,
        "masks_identical": same,
    }


def rss_child(count: int, folder: str) -> None:
    """In a fresh process: plan + listing + streaming the rows of `count` inputs."""
    import ray

    from segen_edge.ray import prepare

    inputs = make_inputs(Path(folder) / "in", count)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    planned = prepare("unet-pets", [str(inputs)], Path(folder) / "out", actors=1)
    planned_s = time.perf_counter() - start
    after_plan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = sum(1 for _ in planned.dataset.iter_rows()) if os.environ.get("SEGEN_RSS_RUN") else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ray.shutdown()
    print(
        json.dumps(
            {
                "inputs": count,
                "plan_s": planned_s,
                "rss_before_mb": before / 1024,
                "rss_after_plan_mb": after_plan / 1024,
                "rss_peak_mb": peak / 1024,
                "rows": rows,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--model", default="unet-pets")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rss", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rss_child(int(args.child[0]), args.child[1])
        return
    from segen_edge.providers import cpu_name

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; model {args.model}, batch {args.batch_size}")
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory(prefix="segen-ray-bench-") as tmp:
            figures = throughput(args, Path(tmp))
        print(
            f"{figures['images']} images: local lanes {figures['local_img_s']:.1f} img/s; "
            f"ray ({args.actors} actors x 1 CPU) {figures['ray_img_s']:.1f} img/s whole "
            f"({figures['ray_img_s'] / figures['local_img_s']:.2f}x), "
            f"{figures['ray_steady_img_s']:.1f} img/s after the first result (rows arrive per block: overstated) "
            f"({figures['ray_steady_img_s'] / figures['local_img_s']:.2f}x); start {figures['ray_start_s']:.1f} s"
        )
        print(
            f"overhead per image: {figures['overhead_ms_per_image']:.2f} ms whole, "
            f"{figures['steady_overhead_ms_per_image']:.2f} ms steady; ok local {figures['local_ok']} ray "
            f"{figures['ray_ok']}; masks identical: {figures['masks_identical']}"
        )
    for count in args.rss:
        with tempfile.TemporaryDirectory(prefix="segen-ray-rss-") as tmp:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(count), tmp],
                capture_output=True,
                text=True,
                check=True,
            )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"driver, {row['inputs']:>6} inputs (plan + listing, no model run): plan {row['plan_s']:.1f} s, "
            f"RSS {row['rss_before_mb']:.0f} MB after ray.init, {row['rss_after_plan_mb']:.0f} MB after planning, "
            f"peak {row['rss_peak_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
