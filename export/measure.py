"""Run and time exported models through the runtime's own Segmenter / Generator.

Export never keeps its own copy of inference: each ONNX model held in memory is opened with
`segen_edge.session.create_session` (bytes in, on the provider being measured) and wrapped
in the runtime's Segmenter or Generator, so what export measures is what `segment` and
`generate` run, preprocessing (`ModelInfo.preprocessing`) included.

Inputs: segmenters take uint8 (N, H, W, C) images already at the model's size; generators
take (N, latent) latents.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from segen_edge.generate import Generator
from segen_edge.metadata import ModelInfo
from segen_edge.model import Model
from segen_edge.openvino_runtime import available as ov_available
from segen_edge.providers import has_bf16, openvino_builtin
from segen_edge.segment import Segmenter
from segen_edge.session import create_session

BF16 = "bf16"  # not a file: the fp32 file run by OpenVINO with INFERENCE_PRECISION_HINT bf16


def to_bytes(model: Any) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def providers_here() -> list[str]:
    """The providers export measures on: the CPU EP always, OpenVINO's EP where it is built
    in, OpenVINO's own runtime where the openvino package is installed."""
    return [
        "cpu",
        *(["openvino"] if openvino_builtin() else []),
        *(["openvino-runtime"] if ov_available() else []),
    ]


def bf16_here(provider: str) -> bool:
    """Whether bf16 can be measured on `provider` on this CPU."""
    return provider in ("openvino", "openvino-runtime") and has_bf16()


def runtime_model(
    model: Any, info: ModelInfo, provider: str = "cpu", threads: int = 1, bf16: bool = False
) -> Model:
    """A Segmenter or Generator for an in-memory onnx.ModelProto (or its bytes)."""
    loaded = create_session(
        to_bytes(model), provider, threads, bf16=bf16, name=f"{info.name or 'model'} (in memory)"
    )
    return Segmenter(loaded, info) if info.task == "segment" else Generator(loaded, info)


def feed(inputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Model input for a batch: uint8 images through the preprocessing, latents as they are."""
    if info.task == "segment":
        return np.ascontiguousarray(info.preprocessing.to_model(inputs))
    return np.ascontiguousarray(inputs, dtype=np.float32)


def keras_feed(inputs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The same batch as Keras takes it (channels last)."""
    if info.task == "segment":
        return dataclasses.replace(info.preprocessing, layout="NHWC").to_model(inputs)
    return np.asarray(inputs, dtype=np.float32)


def raw_outputs(model: Model, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The graph's output for `inputs`, channels last, float32."""
    to_nhwc = model.info.preprocessing.to_nhwc
    parts = [
        to_nhwc(model.run(feed(inputs[i : i + batch_size], model.info)))
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def predictions(model: Model, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """What the runtime makes of `inputs`: (N, H, W) class ids at model size (Segmenter),
    or uint8 (N, H, W, C) images (Generator)."""
    parts = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        if isinstance(model, Segmenter):
            parts.append(model.predict_batch(feed(chunk, model.info)))
        else:
            assert isinstance(model, Generator)
            parts.append(model.decode(feed(chunk, model.info)))
    return np.concatenate(parts)


def latency(
    models: dict[str, Model], sample: np.ndarray, runs: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds per call of each model on one batch `sample`.

    The models take turns call by call, so a machine whose load changes (other jobs on a
    shared CPU) slows them all alike and the comparison stays fair.
    """
    feeds = {key: feed(sample, m.info) for key, m in models.items()}
    for _ in range(warmup):
        for key, m in models.items():
            m.run(feeds[key])
    times: dict[str, list[float]] = {key: [] for key in models}
    keys = list(models)
    for i in range(max(runs, 1)):
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
            start = time.perf_counter()
            models[key].run(feeds[key])
            times[key].append(time.perf_counter() - start)
    return {key: round(float(np.median(t)) * 1e3, 3) for key, t in times.items()}
