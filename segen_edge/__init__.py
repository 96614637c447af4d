"""segen-edge: fast, quantized ONNX inference for segmentation and generation models.

>>> import segen_edge
>>> seg = segen_edge.load_segmenter("unet-pets")
>>> result = seg.segment("cat.jpg")              # a path, a PIL image or an array
>>> result.ids.shape, result.fractions           # class ids at the image's own size
>>> result.save("cat.overlay.png", "overlay")
>>> gen = segen_edge.load_generator("dcgan-mnist")
>>> images = gen.generate(16, seed=0)            # (16, 32, 32, 1) uint8

The library prints nothing: it returns results, raises SegenError (bad input also
ValueError) and logs to the "segen_edge" logger. Heavy modules load on first use, so
`import segen_edge` is cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "BadInputError",
    "GeneratedFile",
    "Generator",
    "ImageResult",
    "JobReport",
    "ModelError",
    "ModelInfo",
    "RunSettings",
    "SegenError",
    "Segmentation",
    "Segmenter",
    "__version__",
    "generate_files",
    "iter_segment_files",
    "load",
    "load_generator",
    "load_segmenter",
    "segment_files",
]

logging.getLogger("segen_edge").addHandler(logging.NullHandler())

_WHERE = {
    "BadInputError": "errors",
    "ModelError": "errors",
    "SegenError": "errors",
    "ModelInfo": "metadata",
    "Generator": "generate",
    "RunSettings": "segment",
    "Segmentation": "segment",
    "Segmenter": "segment",
    "GeneratedFile": "generate_job",
    "ImageResult": "jobs",
    "JobReport": "jobs",
    "generate_files": "generate_job",
    "iter_segment_files": "jobs",
    "segment_files": "jobs",
    "load": "loading",
    "load_generator": "loading",
    "load_segmenter": "loading",
}

if TYPE_CHECKING:
    from .errors import BadInputError, ModelError, SegenError
    from .generate import Generator
    from .generate_job import GeneratedFile, generate_files
    from .jobs import ImageResult, JobReport, iter_segment_files, segment_files
    from .loading import load, load_generator, load_segmenter
    from .metadata import ModelInfo
    from .segment import RunSettings, Segmentation, Segmenter


def __getattr__(name: str) -> Any:
    """Public names load their module on first use (numpy, Pillow, onnxruntime stay out of
    `import segen_edge` and of the CLI's --help)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'segen_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
