"""Run an ONNX model held in memory on NHWC inputs, whatever layout the model was exported in."""

from __future__ import annotations

from typing import Any

import numpy as np

from segen_edge.metadata import ModelInfo


def make_session(model: Any, threads: int = 1) -> Any:
    """An onnxruntime CPU session for an onnx.ModelProto (or its serialized bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; the quantizer's graphs make ORT chatty
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def to_model_layout(batch: np.ndarray, info: ModelInfo) -> np.ndarray:
    """NHWC images -> what the model's input takes (latents pass unchanged)."""
    if info.task == "segment" and info.layout == "NCHW":
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(batch, dtype=np.float32)


def from_model_layout(output: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The model's output -> NHWC."""
    return output.transpose(0, 2, 3, 1) if info.layout == "NCHW" else output


def run(session: Any, inputs: np.ndarray, info: ModelInfo, batch_size: int = 8) -> np.ndarray:
    """NHWC images (or latents) -> NHWC outputs, in batches of `batch_size`."""
    name = session.get_inputs()[0].name
    outputs = []
    for start in range(0, len(inputs), batch_size):
        feed = to_model_layout(inputs[start : start + batch_size], info)
        outputs.append(from_model_layout(session.run(None, {name: feed})[0], info))
    return np.concatenate(outputs).astype(np.float32, copy=False)
