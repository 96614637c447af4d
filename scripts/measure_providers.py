"""Measure the bundled models on every provider here and record it in their cards.

    python scripts/measure_providers.py [--models unet-pets ...] [--images 24] [--runs 30]

Run it in an environment with the `openvino` extra (onnxruntime-openvino brings the CPU EP
too) to add OpenVINO figures beside the CPU EP's: for each model, provider and precision
file, latency at batch 1 and 8 (one thread per run, as the batch job's lanes run it; the
models take turns call by call) and agreement with the fp32 file on the CPU EP over the
card's held-out images, run the way `segment` runs them. A precision below 99% pixel
agreement (generators: PSNR under 40 dB) is recorded as over budget there, and
`--precision auto` (segen_edge.zoo) never picks it on that provider; `--device auto` takes
the provider whose best measured precision is fastest. Only the cards' `export.providers`
entries change; graphs and weights stay byte for byte. Each file's cold start on each
provider (a one-photo job's: engine import, session, first run; `cold_ms`) is recorded too,
so that `auto` can weigh it in a short job; `--cold-only` adds just that to the cards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.measure import latency, providers_here, runtime_model  # noqa: E402
from segen_edge import zoo  # noqa: E402
from segen_edge.bench import MIN_AGREEMENT, MIN_PSNR_DB  # noqa: E402
from segen_edge.evaluate import find_data, held_out_pairs  # noqa: E402
from segen_edge.files import atomic_write  # noqa: E402
from segen_edge.generate import Generator  # noqa: E402
from segen_edge.images import load_image, resize_u8  # noqa: E402
from segen_edge.metadata import ModelInfo  # noqa: E402
from segen_edge.onnxmeta import read_metadata  # noqa: E402
from segen_edge.providers import cpu_name  # noqa: E402
from segen_edge.segment import Segmenter  # noqa: E402


def held_out_images(info: ModelInfo, count: int) -> list[np.ndarray]:
    pairs = held_out_pairs(find_data(info.card.get("data"), info.name), info.card.get("held_out"))
    return [load_image(p.image, info.channels).image_u8 for p in pairs[:count]]


def quality(model: Any, reference: Any, images: list[np.ndarray], latents: np.ndarray) -> dict[str, Any]:
    if isinstance(model, Segmenter):
        run = model.settings()
        got = model.segment_arrays(images, run)
        want = reference.segment_arrays(images, run)
        same = sum(int(np.count_nonzero(a.ids == b.ids)) for a, b in zip(got, want, strict=True))
        agreement = round(same / sum(a.ids.size for a in got), 5)
        return {"metrics": {"agreement": agreement}, "within_budget": agreement >= MIN_AGREEMENT}
    assert isinstance(model, Generator)
    diff = model.decode(latents).astype(np.float64) - reference.decode(latents).astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)
    return {"metrics": {"psnr_db": psnr}, "within_budget": psnr is None or psnr >= MIN_PSNR_DB}


COLD_RUNS = 3  # fresh processes timed per provider and file, after one that warms the caches

COLD_SCRIPT = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
start = time.perf_counter()
from segen_edge.loading import load
from segen_edge.pipeline import cpu_count
model = load({path!r}, device={provider!r}, threads=cpu_count())
if model.info.task == "segment":
    model.segment(np.zeros((*model.info.image_size, model.info.channels), np.uint8))
else:
    model.generate(1, seed=0)
print((time.perf_counter() - start) * 1e3)
"""


def cold_ms(path: Path, provider: str) -> float:
    """A one-photo job's cold start of `path` on `provider`, as `segment photo.jpg` pays it:
    the engine's import, the session (from the warm cache) and the first run on every core,
    in a fresh process (numpy and the interpreter excluded: every engine pays those alike).
    The median of COLD_RUNS processes after one that warms the caches."""
    code = COLD_SCRIPT.format(root=str(ROOT), path=str(path), provider=provider)
    times = []
    for _ in range(COLD_RUNS + 1):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(done.stdout.split()[-1]))
    return round(float(np.median(times[1:])), 1)


def measure_cold(ref: zoo.ModelRef, providers: dict[str, Any]) -> dict[str, Any]:
    """`providers` (a card's export.providers) with each measured file's cold start added
    on every provider here."""
    for provider in providers_here():
        for precision, row in providers.get(provider, {}).get("precisions", {}).items():
            path = ref.files.get(str(row.get("file", precision)))
            if path is not None and not row.get("bf16"):
                row["cold_ms"] = cold_ms(path, provider)
                print(f"{ref.name:>14} {provider:>16} {precision:>5}: cold start {row['cold_ms']} ms")
    return providers


def measure(ref: zoo.ModelRef, images_count: int, runs: int) -> dict[str, Any]:
    fp32_path = ref.files["fp32"]
    info = ModelInfo.from_props(read_metadata(fp32_path), source=str(fp32_path))
    reference = runtime_model(fp32_path.read_bytes(), info, "cpu")
    images = held_out_images(info, images_count) if info.task == "segment" else []
    latents = np.random.default_rng(0).standard_normal((16, info.latent_size)).astype(np.float32)
    out: dict[str, Any] = {}
    for provider in providers_here():
        models, rows = {}, {}
        for precision, path in ref.files.items():
            file_info = ModelInfo.from_props(read_metadata(path), source=str(path))
            models[precision] = runtime_model(path.read_bytes(), file_info, provider)
            rows[precision] = {
                "file": precision,
                "bf16": False,
                **quality(models[precision], reference, images, latents),
            }
        for batch in (1, 8):
            if info.task == "segment":
                sample = np.stack([resize_u8(im, info.image_size) for im in images[:1]] * batch)
            else:
                sample = latents[:1].repeat(batch, axis=0)
            for precision, ms in latency(models, sample, runs).items():
                rows[precision].setdefault("latency_ms", {})[str(batch)] = ms
        for precision, row in rows.items():
            row["cold_ms"] = cold_ms(ref.files[precision], provider)
        out[provider] = {"precisions": rows, "batches": [1, 8], "threads": 1, "runs": runs, "cpu": cpu_name(),
                         "measured_by": "scripts/measure_providers.py"}  # fmt: skip
        for precision, row in rows.items():
            print(f"{ref.name:>14} {provider:>8} {precision:>5}: {row['latency_ms']} ms, {row['metrics']}, "
                  f"within budget {row['within_budget']}")  # fmt: skip
    return out


def record(path: Path, providers: dict[str, Any]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == "segen.card":
            card = json.loads(prop.value)
            card.setdefault("export", {})["providers"] = providers
            prop.value = json.dumps(card, sort_keys=True)
    data = model.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the cards")
    parser.add_argument(
        "--cold-only", action="store_true", help="only add cold starts to the figures the cards hold"
    )
    args = parser.parse_args()
    bundled = zoo.bundled_models()
    for name in args.models or list(bundled):
        ref = bundled[name]
        if "fp32" not in ref.files:
            print(f"{name}: no fp32 file to measure agreement against; skipped")
            continue
        if args.cold_only:
            providers = measure_cold(ref, ref.measurements())
        else:
            providers = measure(ref, args.images, args.runs)
        if not args.dry_run:
            for path in ref.files.values():
                record(path, providers)


if __name__ == "__main__":
    main()
