"""Keras 3 model -> ONNX with tf2onnx, then proof on real inputs that ONNX computes what Keras did.

The input is named `image` (segmenters) or `latents` (generators), the output `logits` or
`images`. Batch is always dynamic; a segmenter's height and width are dynamic too when the
network is fully convolutional (checked by running the ONNX model at another size).

Layout: with NCHW (the default) tf2onnx folds the NHWC<->NCHW transposes around the first
and last conv into the graph's inputs and outputs, so onnxruntime runs no Transpose at all;
on this project's CPU that graph is faster than the NHWC one (see the export report).
`ModelInfo.layout` then says NCHW for both input and output, and the runtime transposes.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from segen_edge.errors import ModelError
from segen_edge.metadata import ModelInfo

from .errors import VerificationError
from .measure import keras_feed, raw_outputs, runtime_model

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAMES = {"segment": "image", "generate": "latents"}
OUTPUT_NAMES = {"segment": "logits", "generate": "images"}


def load_keras(path: str | Path) -> Any:
    """Load a .keras file for inference (no optimizer state)."""
    import keras

    with contextlib.suppress(ImportError):  # registers the training code's custom layers
        import train.models  # noqa: F401
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a bad file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: cannot load the Keras model ({reason}); re-run the training, "
            "or check that keras and the train package match the ones that saved it"
        ) from None


def convert(model: Any, info: ModelInfo, layout: str = "NCHW", dynamic_size: bool = True) -> Any:
    """Convert a Keras model to an onnx.ModelProto at OPSET with named, dynamic axes."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    in_name, out_name = INPUT_NAMES[info.task], OUTPUT_NAMES[info.task]
    if info.task == "segment":
        height, width = (None, None) if dynamic_size else info.image_size
        spec = tf.TensorSpec((None, height, width, info.channels), tf.float32, name=in_name)
    else:
        spec = tf.TensorSpec((None, info.latent_size), tf.float32, name=in_name)

    @tf.function(input_signature=[spec])
    def forward(inputs: Any) -> dict[str, Any]:
        return {out_name: model(inputs, training=False)}

    nchw = layout == "NCHW"
    proto, _ = tf2onnx.convert.from_function(
        forward,
        input_signature=[spec],
        opset=OPSET,
        inputs_as_nchw=[in_name] if nchw and info.task == "segment" else None,
        outputs_as_nchw=[out_name] if nchw else None,
    )
    if [i.name for i in proto.graph.input] != [in_name] or [o.name for o in proto.graph.output] != [out_name]:
        raise ModelError(
            f"{info.name}: expected a model with one input and one output, got inputs "
            f"{[i.name for i in proto.graph.input]} and outputs "
            f"{[o.name for o in proto.graph.output]}"
        )
    _name_axes(proto, layout if info.task == "segment" else "", layout)
    proto.producer_name = "segen-edge export (tf2onnx)"
    return proto


def _name_axes(proto: Any, in_layout: str, out_layout: str) -> None:
    """Readable names for the dynamic axes (tf2onnx calls them unk__N)."""

    def rename(value: Any, layout: str) -> None:
        dims = value.type.tensor_type.shape.dim
        names = ["batch"] + (
            ["channels", "height", "width"] if layout == "NCHW" else ["height", "width", "channels"]
        )
        if not layout:
            names = ["batch", "features"]
        for dim, name in zip(dims, names, strict=False):
            if not dim.HasField("dim_value"):
                dim.dim_param = name

    rename(proto.graph.input[0], in_layout)
    rename(proto.graph.output[0], out_layout)


def probe_size(info: ModelInfo) -> tuple[int, int]:
    """Another (height, width) a fully convolutional model must accept: each side grows by
    the largest power of two (up to 64) that divides it, so downsampling stages still fit."""

    def grow(side: int) -> int:
        step = 1
        while side % (step * 2) == 0 and step < 64:
            step *= 2
        return side + step

    return grow(info.height), grow(info.width)


def accepts_other_sizes(proto: Any, info: ModelInfo) -> bool:
    """Whether the ONNX segmenter maps an image of another size to logits of that size."""
    height, width = probe_size(info)
    zeros = np.zeros((1, height, width, info.channels), dtype=np.uint8)
    try:
        out = raw_outputs(runtime_model(proto, info.replace(image_size=(height, width))), zeros)
    except Exception:  # onnxruntime rejects the shape: the network is not size-agnostic
        return False
    return out.shape[1:3] == (height, width) and bool(np.isfinite(out).all())


def keras_predict(model: Any, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    outputs = [
        np.asarray(model(inputs[start : start + batch_size], training=False))
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32, copy=False)


def verify(
    model: Any, proto: Any, inputs: np.ndarray, info: ModelInfo, tolerance: float = TOLERANCE
) -> float:
    """Run Keras and the runtime on the same real inputs (uint8 images at model size, or
    latents); return the largest absolute difference, or raise VerificationError when it
    exceeds `tolerance`."""
    expected = keras_predict(model, keras_feed(inputs, info))
    actual = raw_outputs(runtime_model(proto, info), inputs)
    what = "images" if info.task == "segment" else "latent vectors"
    if actual.shape != expected.shape:
        raise VerificationError(
            f"{info.name}: the ONNX model's output has shape {actual.shape} but Keras gives "
            f"{expected.shape} on {len(inputs)} {what}; the conversion is wrong"
        )
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not np.isfinite(actual).all() or not diff <= tolerance:
        raise VerificationError(
            f"{info.name}: the ONNX outputs differ from Keras by up to {diff:.3g} on "
            f"{len(inputs)} real {what} (tolerance {tolerance:g}); the conversion is wrong: "
            "look for ops tf2onnx could not convert, or try --layout NHWC"
        )
    return diff
