"""Keras 3 model builders, one architecture family per file."""

from __future__ import annotations

from .dcgan import GAN, CategoricalCode, build_discriminator, build_generator
from .encoders import ENCODERS, build_encoder_unet
from .fcn import build_fcn
from .unet import build_unet

__all__ = [
    "ENCODERS",
    "GAN",
    "CategoricalCode",
    "build_discriminator",
    "build_encoder_unet",
    "build_fcn",
    "build_generator",
    "build_unet",
]
