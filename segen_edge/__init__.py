"""segen-edge: fast, quantized ONNX inference for segmentation and generation models."""

from __future__ import annotations

__version__ = "0.1.0"
