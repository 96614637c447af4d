"""Print the README's results table from the bundled models' cards and a fresh CPU bench.

    python scripts/results_table.py            # runs `segen-edge bench -p all -b 1` itself

Columns: model, precision, file size, quality (held-out mIoU for segmenters, from the export
card; the classifier-based GAN score for generators), and latency p50 at batch 1 on this CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from segen_edge import zoo
from segen_edge.metadata import ModelInfo
from segen_edge.onnxmeta import read_metadata


def quality(info: ModelInfo, precision: str) -> str:
    figures = info.card.get("export", {}).get("precisions", {}).get(precision, {})
    if info.task == "segment":
        miou = figures.get("miou")
        agree = figures.get("agreement")
        return f"mIoU {miou:.3f}, agrees with fp32 on {agree:.2%} of pixels" if miou is not None else "-"
    score = figures.get("quality") or {}
    if not score:
        return "-"
    return (
        f"{score.get('confident_fraction', 0):.0%} confident, "
        f"min class {score.get('min_class_coverage', 0):.1%}, "
        f"Frechet {score.get('frechet_distance', 0):.2f} "
        f"(real-vs-real {score.get('frechet_floor_real_vs_real', 0):.2f})"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = ["segen-edge", "bench", "-p", "all", "-b", "1", "--runs", "50", "-d", "cpu", "--json", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        bench = {(r["model"], r["precision"]): r for r in json.loads(out.read_text())}
    print("| model | precision | size | quality (held-out) | p50 batch 1, CPU |")
    print("|---|---|---|---|---|")
    for name, ref in zoo.bundled_models().items():
        for precision, path in ref.files.items():
            info = ModelInfo.from_props(read_metadata(path))
            row = bench.get((name, precision), {})
            p50 = f"{row['p50_ms']:.2f} ms" if row else "-"
            size = f"{path.stat().st_size / 1e6:.2f} MB"
            print(f"| {name} | {precision} | {size} | {quality(info, precision)} | {p50} |")
    print(f"\n(measured by `{' '.join(cmd[:8])} -d cpu`; quality from each file's card)", file=sys.stderr)


if __name__ == "__main__":
    main()
