"""Measure a model's latency and throughput. Returns results; prints nothing."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .model import Model


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_batch(model: Model, batch_size: int, seed: int = 0) -> np.ndarray:
    """A model input of the right shape, layout and range for `model`."""
    rng = np.random.default_rng(seed)
    info = model.info
    if info.task == "generate":
        return rng.standard_normal((batch_size, info.latent_size), dtype=np.float32)
    shape = (batch_size, info.height, info.width, info.channels)
    pixels = rng.integers(0, 256, size=shape).astype(np.float32)
    batch = pixels * np.float32(info.pixel_scale) + np.float32(info.pixel_offset)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if info.layout == "NCHW" else batch


def stream_throughput(model: Model, batch_size: int, lanes: int, runs: int) -> float:
    """Images/s of `runs` batches through Model.run_many with `lanes` runs in flight."""
    batch = sample_batch(model, batch_size)
    for _ in model.run_many([batch] * lanes, lanes):  # warm every lane
        pass
    start = time.perf_counter()
    for _ in model.run_many(itertools.repeat(batch, runs), lanes):
        pass
    return batch_size * runs / (time.perf_counter() - start)


def measure(
    model: Model,
    batch_size: int,
    runs: int = 50,
    warmup: int = 5,
    lane_model: Model | None = None,
    lanes: int = 1,
) -> BenchResult:
    """Time `runs` calls of the session on one batch, after `warmup` untimed calls; and the
    throughput of `runs` batches through `lane_model` (default `model`) in `lanes` lanes."""
    batch = sample_batch(model, batch_size)
    for _ in range(warmup):
        model.run(batch)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        model.run(batch)
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    path = model.loaded.path
    return BenchResult(
        model=model.info.name or path.stem,
        task=model.info.task,
        precision=model.info.precision,
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
        size_mb=round(path.stat().st_size / 1e6, 2),
        path=str(path),
    )
