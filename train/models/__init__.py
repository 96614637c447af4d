"""Keras 3 model builders, one architecture family per file."""

from __future__ import annotations

from .dcgan import GAN, CategoricalCode, build_discriminator, build_generator
from .fcn import build_fcn
from .unet import build_unet

__all__ = ["GAN", "CategoricalCode", "build_discriminator", "build_fcn", "build_generator", "build_unet"]
