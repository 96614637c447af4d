"""FCN (Long, Shelhamer and Darrell, 2015): a VGG-like conv encoder, 1x1 class scores and
transposed convolutions, initialised to bilinear upsampling, back to the input size.

FCN-32s upsamples the final scores 32x; FCN-8s fuses in scores from pool4 and pool3
first (2x, 2x, then 8x). Trained from scratch here, so the encoder's convs carry
BatchNorm (the paper started from ImageNet VGG-16 weights, which we do not download).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from segen_edge.errors import BadInputError

from .unet import check_block, check_input_size, conv_block, model_input

VARIANTS = ("8s", "32s")


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Conv2DTranspose kernel (size, size, channels, channels) that upsamples each channel
    bilinearly by size // 2 (channel c feeds only channel c)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.arange(size, dtype=np.float64)
    weights_1d = 1 - np.abs(grid - center) / factor
    weights_2d = np.outer(weights_1d, weights_1d).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = weights_2d
    return kernel


def _vgg_block(
    x: keras.KerasTensor, filters: int, convs: int, name: str, block: str = "plain"
) -> keras.KerasTensor:
    x = conv_block(x, filters, name, block, convs)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def _upsample(x: keras.KerasTensor, classes: int, factor: int, name: str) -> keras.KerasTensor:
    layer = layers.Conv2DTranspose(
        classes, 2 * factor, strides=factor, padding="same", use_bias=False, name=name
    )
    out = layer(x)
    layer.set_weights([bilinear_kernel(2 * factor, classes)])
    return out


def build_fcn(
    image_size: tuple[int, int],
    num_classes: int,
    channels: int = 3,
    base_filters: int = 16,
    variant: str = "8s",
    dropout: float = 0.0,
    block: str = "plain",
    any_size: bool = False,
) -> keras.Model:
    """FCN-8s or FCN-32s: (N, H, W, channels) float32 -> (N, H, W, num_classes) logits.

    H and W must be multiples of 32. Encoder widths are VGG-16's divided by 64 / base_filters
    (base_filters=64 gives VGG-16's 64-128-256-512-512). `block` and `any_size` as for
    build_unet.
    """
    if variant not in VARIANTS:
        raise BadInputError(f"fcn: variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    check_block(block)
    check_input_size(image_size, 32, f"fcn{variant}")
    f = base_filters
    inputs = model_input(image_size, channels, any_size)
    x = _vgg_block(inputs, f, 2, "block1", block)
    x = _vgg_block(x, 2 * f, 2, "block2", block)
    pool3 = _vgg_block(x, 4 * f, 3, "block3", block)  # 1/8
    pool4 = _vgg_block(pool3, 8 * f, 3, "block4", block)  # 1/16
    x = _vgg_block(pool4, 8 * f, 3, "block5", block)  # 1/32
    # fc6 / fc7 as convolutions (7x7 in VGG; 3x3 here, the 1/32 maps are small).
    x = layers.Conv2D(16 * f, 3, padding="same", activation="relu", name="fc6")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = layers.Conv2D(16 * f, 1, activation="relu", name="fc7")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc7_dropout")(x)
    scores = layers.Conv2D(num_classes, 1, name="score_fr")(x)
    if variant == "32s":
        logits = _upsample(scores, num_classes, 32, "upscore32")
    else:
        # Skip scores start at zero, as in the paper, so fusion begins as plain FCN-32s.
        score_pool4 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_pool4")(pool4)
        score_pool3 = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_pool3")(pool3)
        x = _upsample(scores, num_classes, 2, "upscore2")
        x = layers.Add(name="fuse_pool4")([x, score_pool4])
        x = _upsample(x, num_classes, 2, "upscore_pool4")
        x = layers.Add(name="fuse_pool3")([x, score_pool3])
        logits = _upsample(x, num_classes, 8, "upscore8")
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"fcn{variant}")
