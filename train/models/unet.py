"""U-Net (Ronneberger et al., 2015): a conv encoder, a decoder that upsamples and
concatenates the encoder's features of the same size at every level, per-pixel logits."""

from __future__ import annotations

import keras
from keras import layers

from segen_edge.errors import BadInputError


def check_input_size(image_size: tuple[int, int], multiple: int, arch: str) -> None:
    """Raise a clear error when a side is not a multiple of `multiple`, saying how to pad."""
    height, width = image_size
    if height % multiple or width % multiple:
        fit_h = -(-height // multiple) * multiple
        fit_w = -(-width // multiple) * multiple
        raise BadInputError(
            f"{arch}: image size {height}x{width} is not a multiple of {multiple} on each side; "
            f"use --image-size {fit_h} {fit_w} (pad or resize the input to {fit_h}x{fit_w})"
        )


def conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two 3x3 conv -> BatchNorm -> ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    image_size: tuple[int, int],
    num_classes: int,
    channels: int = 3,
    depth: int = 4,
    base_filters: int = 16,
    dropout: float = 0.0,
) -> keras.Model:
    """U-Net taking (N, H, W, channels) float32, returning (N, H, W, num_classes) logits.

    `depth` poolings, filters doubling from `base_filters` at each level; H and W must be
    multiples of 2**depth. `dropout` is applied at the bottleneck.
    """
    if depth < 1:
        raise BadInputError(f"unet: depth is {depth}; expected at least 1")
    check_input_size(image_size, 2**depth, "unet")
    inputs = keras.Input((*image_size, channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv_block(x, base_filters * 2**depth, "bottleneck")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_block(x, filters, f"dec{level}")
    logits = layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="unet")
