"""Measure a model's cold start, latency and throughput, and its agreement with fp32.

Returns results; prints nothing. Cold start (session creation + first run) is reported apart
from warm latency; each precision's agreement with the fp32 file sits beside its speed:
the fraction of pixels whose class agrees for segmenters (on a few real images when a data
folder is given, else on synthetic input), MSE and PSNR of the images for generators.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .model import Model

AGREEMENT_IMAGES = 8


@dataclass(frozen=True)
class BenchResult:
    model: str
    task: str
    precision: str
    provider: str
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    images_per_s: float  # one run at a time (over every core unless --threads)
    stream_images_per_s: float  # a stream of batches run as segment/generate run them
    lanes: int  # runs in flight for the stream figure
    size_mb: float
    path: str
    session_ms: float | None = None  # cold start: creating the session
    first_run_ms: float | None = None  # cold start: the first run after it
    agreement: float | None = None  # segmenters: pixels whose class matches fp32
    mse: float | None = None  # generators: mean squared pixel difference from fp32
    psnr_db: float | None = None  # generators: PSNR against fp32 (None: identical)
    agreement_on: str = ""  # "N real images" | "N synthetic inputs" | "" (not measured)

    @property
    def cold_start_ms(self) -> float | None:
        if self.session_ms is None or self.first_run_ms is None:
            return None
        return round(self.session_ms + self.first_run_ms, 3)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cold_start_ms": self.cold_start_ms}


@dataclass(frozen=True)
class ColdStart:
    session_ms: float
    first_run_ms: float


def sample_batch(model: Model, batch_size: int, seed: int = 0) -> np.ndarray:
    """A synthetic model input of the right shape, layout and range for `model`."""
    rng = np.random.default_rng(seed)
    info = model.info
    if info.task == "generate":
        return rng.standard_normal((batch_size, info.latent_size), dtype=np.float32)
    pixels = rng.integers(0, 256, size=(batch_size, info.height, info.width, info.channels))
    return info.preprocessing.to_model(pixels.astype(np.uint8))


def real_batch(model: Model, folder: Path, count: int = AGREEMENT_IMAGES) -> np.ndarray | None:
    """Up to `count` images of `folder` (sorted, recursive) as model input, or None."""
    from .errors import BadInputError
    from .files import find_images
    from .images import load_image, resize_u8

    info = model.info
    images = []
    try:
        for source in itertools.islice(find_images([folder], recursive=True), count * 4):
            try:
                image = load_image(source.path, info.channels).image_u8
            except BadInputError:
                continue
            images.append(resize_u8(image, info.image_size))
            if len(images) == count:
                break
    except BadInputError:
        return None
    return info.preprocessing.to_model(np.stack(images)) if images else None


def cold_start(open_model: Callable[[], Model], batch_size: int = 1) -> tuple[Model, ColdStart]:
    """Open a model with `open_model()` and run it once: the model and both times."""
    start = time.perf_counter()
    model = open_model()
    opened = time.perf_counter()
    model.run(sample_batch(model, batch_size))
    done = time.perf_counter()
    return model, ColdStart(round((opened - start) * 1e3, 3), round((done - opened) * 1e3, 3))


MIN_PSNR_DB = 40.0  # a generator's precision is within budget where its images are this close to fp32's
MIN_AGREEMENT = 0.99  # a segmenter's, where its class ids agree with fp32's on this share of pixels


def agreement(model: Model, reference: Model, batch: np.ndarray) -> dict[str, float | None]:
    """How closely `model` follows `reference` (the fp32 file) on one input batch."""
    if model.info.task == "segment":
        from .segment import Segmenter

        assert isinstance(model, Segmenter) and isinstance(reference, Segmenter)
        same = model.predict_batch(batch) == reference.predict_batch(batch)
        return {"agreement": round(float(np.mean(same)), 5)}
    from .generate import Generator

    assert isinstance(model, Generator) and isinstance(reference, Generator)
    diff = model.decode(batch).astype(np.float64) - reference.decode(batch).astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = round(10 * float(np.log10(255.0**2 / mse)), 2) if mse > 0 else None
    return {"mse": round(mse, 4), "psnr_db": psnr}


def stream_throughput(model: Model, batch_size: int, lanes: int, runs: int) -> float:
    """Images/s of `runs` batches through Model.run_many with `lanes` runs in flight."""
    batch = sample_batch(model, batch_size)
    for _ in model.run_many([batch] * lanes, lanes):  # warm every lane
        pass
    start = time.perf_counter()
    for _ in model.run_many(itertools.repeat(batch, runs), lanes):
        pass
    return batch_size * runs / (time.perf_counter() - start)


def run_times(model: Model, batch_size: int, runs: int, warmup: int) -> np.ndarray:
    """Seconds of each of `runs` calls of the session on one sample batch, after `warmup`
    untimed calls."""
    batch = sample_batch(model, batch_size)
    for _ in range(warmup):
        model.run(batch)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        model.run(batch)
        times[i] = time.perf_counter() - start
    return times


def measure(
    model: Model,
    batch_size: int,
    runs: int = 50,
    warmup: int = 5,
    lane_model: Model | None = None,
    lanes: int = 1,
    *,
    cold: ColdStart | None = None,
    reference: Model | None = None,
    data: Path | None = None,
) -> BenchResult:
    """Time `runs` calls of the session on one batch, after `warmup` untimed calls; and the
    throughput of `runs` batches through `lane_model` (default `model`) in `lanes` lanes.

    `cold`: the model's cold start (see cold_start). `reference`: the fp32 model to measure
    agreement against, on up to AGREEMENT_IMAGES images of `data` (else synthetic input).
    """
    times = run_times(model, batch_size, runs, warmup)
    ms = times * 1e3
    quality: dict[str, Any] = {}
    if reference is not None:
        probe = real_batch(model, data) if data is not None and model.info.task == "segment" else None
        on = f"{len(probe)} real images" if probe is not None else ""
        if probe is None:
            probe = sample_batch(model, AGREEMENT_IMAGES, seed=1)
            on = f"{AGREEMENT_IMAGES} synthetic inputs"
        quality = {**agreement(model, reference, probe), "agreement_on": on}
    path = model.loaded.path
    precision = "bf16" if getattr(model.loaded, "bf16", False) else model.info.precision
    return BenchResult(
        model=model.info.name or path.stem,
        task=model.info.task,
        precision=precision,
        provider=model.provider,
        batch_size=batch_size,
        runs=runs,
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        mean_ms=round(float(ms.mean()), 3),
        std_ms=round(float(ms.std()), 3),
        images_per_s=round(batch_size / float(times.mean()), 1),
        stream_images_per_s=round(stream_throughput(lane_model or model, batch_size, lanes, runs), 1),
        lanes=lanes,
        size_mb=round(path.stat().st_size / 1e6, 2) if path.is_file() else 0.0,
        path=str(path),
        session_ms=cold.session_ms if cold else None,
        first_run_ms=cold.first_run_ms if cold else None,
        **quality,
    )
