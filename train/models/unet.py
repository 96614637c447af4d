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


BLOCKS = ("plain", "residual")


def check_block(block: str) -> None:
    if block not in BLOCKS:
        raise BadInputError(f"--block {block!r} is unknown; expected one of {', '.join(BLOCKS)}")


def conv_block(
    x: keras.KerasTensor, filters: int, name: str, block: str = "plain", convs: int = 2
) -> keras.KerasTensor:
    """`convs` 3x3 conv -> BatchNorm -> ReLU. "residual" adds the block's input (through a
    1x1 conv + BatchNorm where the width changes) before the last ReLU (He et al. 2016)."""
    shortcut = x
    for i in range(1, convs + 1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        if block == "residual" and i == convs:
            if shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
                shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def model_input(image_size: tuple[int, int], channels: int, any_size: bool = False) -> keras.KerasTensor:
    """The image input: (N, H, W, C), or (N, None, None, C) for a model trained on crops and
    run on whole images (any size that is a multiple of its stride)."""
    shape = (None, None, channels) if any_size else (*image_size, channels)
    return keras.Input(shape, name="image")


def build_unet(
    image_size: tuple[int, int],
    num_classes: int,
    channels: int = 3,
    depth: int = 4,
    base_filters: int = 16,
    dropout: float = 0.0,
    block: str = "plain",
    any_size: bool = False,
) -> keras.Model:
    """U-Net taking (N, H, W, channels) float32, returning (N, H, W, num_classes) logits.

    `depth` poolings, filters doubling from `base_filters` at each level; H and W must be
    multiples of 2**depth. `dropout` is applied at the bottleneck. `block`: plain or
    residual conv blocks. `any_size`: the input takes any height and width (crop training).
    """
    if depth < 1:
        raise BadInputError(f"unet: depth is {depth}; expected at least 1")
    check_block(block)
    check_input_size(image_size, 2**depth, "unet")
    inputs = model_input(image_size, channels, any_size)
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"enc{level}", block)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv_block(x, base_filters * 2**depth, "bottleneck", block)
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_block(x, filters, f"dec{level}", block)
    logits = layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="unet")
