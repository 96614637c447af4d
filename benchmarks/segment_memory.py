"""Peak memory of `segen-edge segment` on large JPEGs, as a user runs it.

    python benchmarks/segment_memory.py [--sizes 4000x3000,8000x6000] [--save mask,color,overlay]
                                        [--modes resize,tile]

Each size is a pets-full photo enlarged to WxH and saved as a JPEG (q90) in a temporary
folder; each run is a fresh `segen-edge segment` process, and its peak RSS is the child's
ru_maxrss. Prints one row per (mode, size): megapixels, seconds, peak RSS in MB.
Target (issue 16): <= 800 MB on 48 MP with --save mask,color,overlay, flat in size for tiles.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pets-full" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2000x1500,4000x3000,8000x6000")
    parser.add_argument("--save", default="mask,color,overlay")
    parser.add_argument("--modes", default="resize,tile")
    parser.add_argument("--model", default="unet-pets")
    args = parser.parse_args()
    photo = sorted(DATA.glob("*.jpg"))[0]
    sizes = sorted(
        (tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")), key=lambda s: s[0] * s[1]
    )
    print(
        f"segen-edge segment -m {args.model} --save {args.save}; photo {photo.name} enlarged; "
        f"CPU: {os.uname().machine}, {os.cpu_count()} cores"
    )
    print(f"{'mode':>7} {'size':>10} {'MP':>5} {'seconds':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            folder = Path(tmp) / f"{width}x{height}"
            folder.mkdir()
            with Image.open(photo) as img:
                img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(
                    folder / "big.jpg", quality=90
                )
            for mode in args.modes.split(","):
                out = Path(tmp) / f"out-{mode}-{width}"
                # one process per measurement: a child's ru_maxrss is its own peak only when it
                # is the largest so far, hence smallest sizes first and a fresh interpreter here
                code = (
                    "import resource, subprocess, sys; "
                    f"r = subprocess.run({[sys.executable, '-m', 'segen_edge.cli', 'segment', str(folder), '-o', str(out), '-m', args.model, '--save', args.save, '--mode', mode, '-q', '--max-pixels', '200000000']!r}); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
                )
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode:
                    print(f"{mode:>7} {width}x{height}: failed: {done.stderr.strip()[-300:]}")
                    continue
                peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
                print(
                    f"{mode:>7} {f'{width}x{height}':>10} {width * height / 1e6:5.1f} {seconds:8.1f} {peak_mb:12.0f}"
                )


if __name__ == "__main__":
    main()
