"""fp16 and int8 versions of an fp32 ONNX model.

fp16: onnxconverter-common converts weights and compute to half precision; the graph's
input and output stay float32, so callers feed and read the same arrays.

int8: static QDQ (QuantizeLinear/DequantizeLinear pairs around each quantized op), the format
onnxruntime's CPU kernels fuse into integer convolutions. Weights are int8 per output
channel, activations uint8 with ranges from real calibration data. `Int8Quantizer`
calibrates once (the ranges are cached as JSON) and then re-quantizes cheaply with other
nodes left in float, which is what the per-layer sensitivity search needs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from segen_edge.metadata import ModelInfo

from .inference import make_session, run

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantization tools' advice and float16's truncation warnings, and keep
    the calibrators' print()s off stdout (which carries the report)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Half-precision weights and compute; float32 inputs and outputs kept."""
    from onnxconverter_common import float16

    with _quiet():
        return float16.convert_float_to_float16(model, keep_io_types=True)


class Int8Quantizer:
    """Calibrate once, then quantize as often as needed with different nodes left in float."""

    def __init__(
        self,
        model: onnx.ModelProto,
        reader: CalibrationDataReader,
        method: str,
        workdir: str | Path,
        reduce_range: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.reader = reader
        self.method = method
        self.reduce_range = reduce_range
        source = self.workdir / "fp32.onnx"
        onnx.save(model, source)
        self.prepared = self.workdir / "prepared.onnx"
        # Symbolic shape inference cannot follow dynamic height/width through the resize
        # arithmetic of transposed convs (and leaves a temp file in the cwd when it fails);
        # ONNX shape inference plus ORT's constant folding is all a convnet needs.
        with _quiet():
            quant_pre_process(source, self.prepared, skip_symbolic_shape=True)
        self.cache = self.workdir / f"calibration-{method}.json"
        graph = onnx.load(self.prepared).graph
        self.candidates = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]

    def quantize(
        self, exclude: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> onnx.ModelProto:
        """The int8 model, with `exclude` left in float (or only `only` quantized)."""
        out = self.workdir / "int8.onnx"
        options: dict[str, Any] = {}
        if self.method == "percentile":
            options["CalibPercentile"] = 99.999
        if not self.cache.exists() and hasattr(self.reader, "__len__"):
            # Calibrate in slices: the calibrators keep every intermediate tensor of what
            # they are fed at once, gigabytes for 100 images through a U-Net.
            total = len(self.reader)
            options["CalibStridedMinMax"] = max(d for d in range(1, 17) if total % d == 0)
        with _quiet():
            quantize_static(
                str(self.prepared),
                str(out),
                calibration_data_reader=None if self.cache.exists() else self.reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=self.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=list(only) if only else None,
                nodes_to_exclude=list(exclude),
                calibrate_method=CALIBRATION_METHODS[self.method],
                calibration_cache_path=str(self.cache),
                extra_options=options,
            )
        return onnx.load(out)


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """Mean squared error relative to the reference's mean square (0 = identical)."""
    power = float(np.mean(np.square(reference, dtype=np.float64))) or 1.0
    return float(np.mean(np.square(output - reference, dtype=np.float64))) / power


def rank_sensitivity(
    quantizer: Int8Quantizer,
    inputs: np.ndarray,
    reference: np.ndarray,
    info: ModelInfo,
    progress: Callable[[str], None] = lambda _: None,
) -> list[tuple[str, float]]:
    """Per-layer sensitivity: quantize one weighted node at a time and measure how far the
    output moves from fp32 (relative squared error on `inputs`). Most sensitive first."""
    scores = []
    for i, node in enumerate(quantizer.candidates, 1):
        output = run(make_session(quantizer.quantize(only=[node])), inputs, info)
        scores.append((node, relative_error(output, reference)))
        progress(f"sensitivity {i}/{len(quantizer.candidates)}: {node} {scores[-1][1]:.2e}")
    return sorted(scores, key=lambda item: item[1], reverse=True)


@dataclass
class Int8Result:
    model: onnx.ModelProto
    drop: float  # what `drop_of` measured on the final model
    metrics: dict[str, Any]  # and the figures it measured them from
    excluded: list[str] = field(default_factory=list)  # nodes left in float
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    within_budget: bool = True


def quantize_within_budget(
    quantizer: Int8Quantizer,
    drop_of: Callable[[onnx.ModelProto], tuple[float, dict[str, Any]]],
    max_drop: float,
    rank: Callable[[], list[tuple[str, float]]],
    progress: Callable[[str], None] = lambda _: None,
) -> Int8Result:
    """Quantize everything; while the drop `drop_of(model)` measures exceeds `max_drop`,
    leave the next most sensitive node (from `rank()`) in float and quantize again."""
    model = quantizer.quantize()
    drop, metrics = drop_of(model)
    progress(f"int8, all weighted nodes quantized: drop {drop:.4f}")
    if drop <= max_drop:
        return Int8Result(model, drop, metrics)
    ranking = rank()
    excluded: list[str] = []
    for node, _ in ranking:
        excluded.append(node)
        model = quantizer.quantize(exclude=excluded)
        drop, metrics = drop_of(model)
        progress(f"int8 with {len(excluded)} node(s) in float (+{node}): drop {drop:.4f}")
        if drop <= max_drop:
            return Int8Result(model, drop, metrics, excluded, ranking)
    return Int8Result(model, drop, metrics, excluded, ranking, within_budget=False)
