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
import inspect
import logging
import re
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

from .measure import feed, latency, raw_outputs, runtime_model

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _quantized_ops() -> frozenset[str]:
    """Every op type the QDQ quantizer may wrap in QuantizeLinear/DequantizeLinear pairs:
    each such node on a float map is a candidate for staying in float (including the
    Slice/Pad tf2onnx puts after each ConvTranspose)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    extra = ("Add", "Mul", "Concat", "GlobalAveragePool", "LeakyRelu", "Sigmoid", "Softmax")
    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry) | frozenset(extra)


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
        symmetric_activations: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.reader = reader
        self.method = method
        self.reduce_range = reduce_range
        self.symmetric_activations = symmetric_activations
        source = self.workdir / "fp32.onnx"
        onnx.save(model, source)
        self.prepared = self.workdir / "prepared.onnx"
        # Symbolic shape inference cannot follow dynamic height/width through the resize
        # arithmetic of transposed convs (and leaves a temp file in the cwd when it fails);
        # ONNX shape inference plus ORT's constant folding is all a convnet needs.
        with _quiet():
            quant_pre_process(source, self.prepared, skip_symbolic_shape=True)
        graph = onnx.load(self.prepared).graph
        weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
        self.candidates = [n.name for n in weighted]  # what the speed search groups
        floats = {
            v.name
            for v in (*graph.value_info, *graph.output)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        }
        # What the accuracy search may leave in float: weighted nodes first, then every other
        # node the quantizer wraps in a QDQ pair on a float map (not the int64 shape
        # arithmetic of dynamic sizes).
        quantized = _quantized_ops()
        self.sensitive = self.candidates + [
            n.name
            for n in graph.node
            if n.op_type not in WEIGHTED_OPS and n.op_type in quantized and n.output and n.output[0] in floats
        ]
        self.labels = {n.name: layer_label(n) for n in graph.node if n.name in set(self.sensitive)}

    def settings(self) -> dict[str, Any]:
        """How this quantizer quantizes, for the card."""
        return {
            "method": self.method,
            "reduce_range": self.reduce_range,
            "weights": "int8 symmetric, per channel",
            "activations": "int8 symmetric" if self.symmetric_activations else "uint8",
        }

    def quantize(
        self,
        exclude: Sequence[str] = (),
        only: Sequence[str] | None = None,
        method: str | None = None,
    ) -> onnx.ModelProto:
        """The int8 model, with `exclude` left in float (or only `only` quantized), ranges
        calibrated with `method` (default: this quantizer's)."""
        method = method or self.method
        cache = self.workdir / f"calibration-{method}.json"
        out = self.workdir / "int8.onnx"
        options: dict[str, Any] = {"WeightSymmetric": True}
        if self.symmetric_activations:
            options["ActivationSymmetric"] = True
        if method == "percentile":
            options["CalibPercentile"] = 99.999
        if not cache.exists() and hasattr(self.reader, "__len__"):
            # Calibrate in slices: the calibrators keep every intermediate tensor of what
            # they are fed at once, gigabytes for 100 images through a U-Net.
            total = len(self.reader)
            options["CalibStridedMinMax"] = max(d for d in range(1, 17) if total % d == 0)
        if hasattr(self.reader, "rewind"):
            self.reader.rewind()
        with _quiet():
            quantize_static(
                str(self.prepared),
                str(out),
                calibration_data_reader=None if cache.exists() else self.reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=self.reduce_range,
                activation_type=QuantType.QInt8 if self.symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=list(only) if only else None,
                nodes_to_exclude=list(exclude),
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options=options,
                **({"calibration_cache_path": str(cache)} if _HAS_CALIBRATION_CACHE else {}),
            )
        return onnx.load(out)


# onnxruntime 1.24 (what onnxruntime-openvino ships) cannot keep calibrated ranges between
# calls; there every variant calibrates afresh (slower, the same ranges).
_HAS_CALIBRATION_CACHE = "calibration_cache_path" in inspect.signature(quantize_static).parameters


def output_sizes(
    model_path: str | Path, names: Sequence[str], sample: np.ndarray, info: ModelInfo
) -> dict[str, tuple[int, ...]]:
    """Shape (without batch) of each named node's first output, for one real input."""
    model = onnx.load(model_path)
    nodes = {n.name: n for n in model.graph.node}
    outputs = [nodes[name].output[0] for name in names]
    known = {o.name for o in model.graph.output}
    for tensor in outputs:
        if tensor not in known:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
            )
    session = runtime_model(model, info).loaded.session
    inputs = {session.get_inputs()[0].name: feed(sample[:1], info)}
    wanted = [o.name for o in session.get_outputs() if o.name in set(outputs)]
    values = dict(zip(wanted, session.run(wanted, inputs), strict=True))
    return {name: tuple(values[nodes[name].output[0]].shape[1:]) for name in names}


def resolution_levels(sizes: dict[str, tuple[int, ...]]) -> list[list[str]]:
    """Weighted nodes grouped by output resolution (H * W of conv maps, else the element
    count), largest first: the layers with the most pixels and fewest channels are
    where int8 kernels are slowest relative to fp32."""

    def pixels(shape: tuple[int, ...]) -> int:
        if len(shape) == 3:  # ONNX Conv/ConvTranspose outputs are (C, H, W)
            return int(shape[1] * shape[2])
        return int(np.prod(shape)) if shape else 1

    levels: dict[int, list[str]] = {}
    for name, shape in sizes.items():
        levels.setdefault(pixels(shape), []).append(name)
    return [levels[k] for k in sorted(levels, reverse=True)]


SPEED_TOLERANCE = 0.03


@dataclass
class SpeedChoice:
    exclude: list[str]  # weighted nodes left in float because int8 is slower there
    timings_ms: dict[str, float]  # configuration -> median latency


def choose_for_speed(
    quantizer: Int8Quantizer,
    fp32: onnx.ModelProto,
    sample: np.ndarray,
    info: ModelInfo,
    runs: int = 20,
    progress: Callable[[str], None] = lambda _: None,
    provider: str = "cpu",
) -> SpeedChoice:
    """Latency-aware mixed precision: try leaving the highest-resolution levels of weighted
    nodes in float (none, the first, the first two, ...), time every variant against fp32
    on this CPU, and keep the fastest (the most quantized one within 3% of it). On CPUs
    without VNNI, int8 convs over wide, thin maps (8 channels at full resolution) are
    slower than fp32's NCHWc kernels."""
    sizes = output_sizes(quantizer.prepared, quantizer.candidates, sample, info)
    levels = resolution_levels(sizes)
    variants: dict[str, tuple[list[str], onnx.ModelProto]] = {}
    exclude: list[str] = []
    for depth in range(len(levels)):  # depth 0: everything quantized
        if depth:
            exclude = exclude + levels[depth - 1]
        key = "int8" if not depth else f"int8, top {depth} level(s) in float"
        variants[key] = (list(exclude), quantizer.quantize(exclude=exclude))
    models = {"fp32": fp32, **{k: m for k, (_, m) in variants.items()}}
    timings = latency({k: runtime_model(m, info, provider) for k, m in models.items()}, sample[:1], runs)
    # The variant with the fewest layers in float among those within SPEED_TOLERANCE of the
    # fastest: timing noise on a busy machine must not cost int8's size for nothing.
    fastest = min(timings[k] for k in variants)
    best = next(k for k in variants if timings[k] <= fastest * (1 + SPEED_TOLERANCE))
    progress("speed: " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    return SpeedChoice(variants[best][0], timings)


def layer_label(node: onnx.NodeProto) -> str:
    """The Keras layer a converted node came from, read from tf2onnx's tensor names
    (`model_1/enc0_conv1_1/convolution/...` -> `enc0_conv1`); the node name otherwise."""
    for name in (*node.input[1:2], node.name, node.output[0]):
        parts = name.split("/")
        if len(parts) >= 3:
            return re.sub(r"_\d+$", "", parts[1])
    return node.name


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
    provider: str = "cpu",
) -> list[tuple[str, float]]:
    """Per-layer sensitivity: quantize one node at a time (weighted ones, then arithmetic)
    and measure how far the output moves from fp32 (relative squared error on `inputs`).
    Most sensitive first."""
    scores = []
    for i, node in enumerate(quantizer.sensitive, 1):
        quantized = runtime_model(quantizer.quantize(only=[node]), info, provider)
        output = raw_outputs(quantized, inputs)
        scores.append((node, relative_error(output, reference)))
        label = quantizer.labels.get(node, node)
        progress(f"sensitivity {i}/{len(quantizer.sensitive)}: {label} {scores[-1][1]:.2e}")
    return sorted(scores, key=lambda item: item[1], reverse=True)


@dataclass
class Int8Result:
    model: onnx.ModelProto
    drop: float  # what `drop_of` measured on the final model
    metrics: dict[str, Any]  # and the figures it measured them from
    excluded: list[str] = field(default_factory=list)  # nodes left in float
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    within_budget: bool = True
    method: str = "minmax"  # the calibration method of the final model
    methods_tried: dict[str, float] = field(default_factory=dict)  # method -> drop


def quantize_within_budget(
    quantizer: Int8Quantizer,
    drop_of: Callable[[onnx.ModelProto], tuple[float, dict[str, Any]]],
    max_drop: float,
    rank: Callable[[], list[tuple[str, float]]],
    progress: Callable[[str], None] = lambda _: None,
    base_exclude: Sequence[str] = (),
    methods: Sequence[str] = (),
) -> Int8Result:
    """Quantize everything but `base_exclude`; while the drop `drop_of(model)` measures
    exceeds `max_drop`, first try the other calibration `methods` (keeping the best), then
    leave the next most sensitive node (from `rank()`) in float too and quantize again.
    `excluded` lists only the nodes left in float for accuracy; `within_budget` is False
    when even every candidate in float did not bring the drop within `max_drop`."""
    tried: dict[str, float] = {}
    best: tuple[float, str, onnx.ModelProto, dict[str, Any]] | None = None
    for method in [quantizer.method, *[m for m in methods if m != quantizer.method]]:
        model = quantizer.quantize(exclude=base_exclude, method=method)
        drop, metrics = drop_of(model)
        tried[method] = round(drop, 6)
        progress(
            f"int8, {method} calibration ({len(base_exclude)} node(s) in float for speed): drop {drop:.4f}"
        )
        if best is None or drop < best[0]:
            best = (drop, method, model, metrics)
        if drop <= max_drop:
            return Int8Result(model, drop, metrics, method=method, methods_tried=tried)
    assert best is not None
    drop, method, model, metrics = best
    quantizer.method = method  # the sensitivity search goes on from the best calibration
    ranking = [(n, e) for n, e in rank() if n not in set(base_exclude)]
    excluded: list[str] = []
    for node, _ in ranking:
        excluded.append(node)
        model = quantizer.quantize(exclude=[*base_exclude, *excluded])
        drop, metrics = drop_of(model)
        progress(
            f"int8 with {len(excluded)} node(s) in float (+{quantizer.labels.get(node, node)}): "
            f"drop {drop:.4f}"
        )
        if drop <= max_drop:
            return Int8Result(model, drop, metrics, excluded, ranking, True, method, tried)
    return Int8Result(model, drop, metrics, excluded, ranking, False, method, tried)
