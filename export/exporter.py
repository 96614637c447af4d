"""Export a training run: convert, verify, quantize, evaluate, time, stamp, write.

fp32 is always built (it is the reference every other precision is measured against) even
when it is not asked for; only the asked-for precisions are written. Every file carries the
`segen.*` metadata with the run's training card plus an `export` section holding the figures
measured here for all precisions.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segen_edge import __version__
from segen_edge.images import atomic_write, to_pixels
from segen_edge.metadata import PRECISIONS, ModelInfo, stamp_onnx

from .calibrate import ArrayReader, calibration_paths, latent_samples, load_calibration
from .convert import TOLERANCE, accepts_other_sizes, convert, load_keras, verify
from .errors import ExportError
from .evaluate import (
    HeldOut,
    class_maps,
    generator_metrics,
    load_held_out,
    measure_latency,
    segment_metrics,
)
from .inference import make_session, run
from .quantize import (
    Int8Quantizer,
    Int8Result,
    SpeedChoice,
    choose_for_speed,
    quantize_within_budget,
    rank_sensitivity,
    to_fp16,
)
from .run import load_run

SENSITIVITY_SAMPLES = 16
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class ExportOptions:
    run_dir: Path
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calib_dir: Path | None = None  # None: the training data named in the card
    calib_count: int = 100
    calib_method: str = "minmax"
    out_dir: Path | None = None  # None: RUN_DIR/onnx
    max_drop: float = 0.01
    reduce_range: bool = True  # 7-bit weights: no u8s8 saturation on AVX2 without VNNI
    speed_search: bool = True  # leave high-resolution layers in float where int8 is slower
    name: str | None = None
    layout: str = "NCHW"
    overwrite: bool = False
    tolerance: float = TOLERANCE
    latency_runs: int = 30
    eval_limit: int | None = None
    command: str = ""


@dataclass
class Row:
    """One precision's figures."""

    precision: str
    path: Path | None  # None when the precision was only built as a reference
    size_bytes: int
    metrics: dict[str, Any]
    latency_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "file": str(self.path) if self.path else None,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            **self.metrics,
        }


@dataclass
class ExportReport:
    name: str
    task: str
    layout: str
    dynamic_size: bool
    verify_max_diff: float
    held_out: str
    rows: list[Row] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    excluded_nodes: list[str] = field(default_factory=list)  # in float for accuracy
    speed_nodes: list[str] = field(default_factory=list)  # in float for speed
    speed_timings: dict[str, float] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)  # ONNX node -> Keras layer
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    within_budget: bool = True
    latency: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    report_path: Path | None = None

    def card(self) -> dict[str, Any]:
        """The `export` section of every file's card."""
        return {
            "exporter": exporter_version(),
            "layout": self.layout,
            "dynamic_size": self.dynamic_size,
            "verified_max_abs_diff": self.verify_max_diff,
            "held_out": self.held_out,
            "precisions": {
                r.precision: {
                    k: v for k, v in r.to_json().items() if k not in ("precision", "file")
                }
                for r in self.rows
            },
            "latency": self.latency,
            "calibration": self.calibration,
            "excluded_nodes": self.excluded_nodes,
            "excluded_layers": [self.layers.get(n, n) for n in self.excluded_nodes],
            "float_for_speed": self.speed_nodes,
            "float_for_speed_layers": [self.layers.get(n, n) for n in self.speed_nodes],
            "speed_search_ms": self.speed_timings,
            "within_budget": self.within_budget,
            "command": self.command,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            **self.card(),
            "precisions": [r.to_json() for r in self.rows],
            "sensitivity": [
                [n, self.layers.get(n, n), round(s, 6)] for n, s in self.sensitivity[:20]
            ],
        }

    def table(self) -> str:
        """A short plain-text table of the figures."""
        fp32 = next((r for r in self.rows if r.precision == "fp32"), None)
        if self.task == "segment":
            quality_cols = [("mIoU", "miou"), ("agree", "agreement")]
        else:
            quality_cols = [("MAD", "mean_abs_diff"), ("FD", "quality.frechet_distance"),
                            ("confident", "quality.confident_fraction")]
        head = ["precision", "size MB", "vs fp32"] + [c for c, _ in quality_cols]
        head += ["ms/img", "speedup", "file"]
        lines = [head]
        for r in self.rows:
            ratio = r.size_bytes / fp32.size_bytes if fp32 else 1.0
            speed = None
            if fp32 and fp32.latency_ms and r.latency_ms:
                speed = fp32.latency_ms / r.latency_ms
            cells = [r.precision, f"{r.size_bytes / 1e6:.2f}", f"{ratio:.0%}"]
            cells += [_fmt(_lookup(r.metrics, key)) for _, key in quality_cols]
            cells += [_fmt(r.latency_ms, 2), f"{speed:.2f}x" if speed else "-"]
            cells.append(r.path.name if r.path else "(reference, not written)")
            lines.append(cells)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
        text = [
            f"{self.name}: {self.task}, layout {self.layout}, "
            f"{'dynamic' if self.dynamic_size else 'fixed'} size; ONNX vs Keras max |diff| "
            f"{self.verify_max_diff:.2g}; evaluated on {self.held_out}"
        ]
        text += [
            "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
            for line in lines
        ]
        if self.calibration:
            cal = self.calibration
            text.append(
                f"int8: {cal.get('method')} calibration on {cal.get('count')} {cal.get('kind')}; "
                "in float for speed: "
                f"{', '.join(self.layers.get(n, n) for n in self.speed_nodes) or 'none'}; "
                "for accuracy: "
                f"{', '.join(self.layers.get(n, n) for n in self.excluded_nodes) or 'none'}"
                + ("" if self.within_budget else " (STILL OVER --max-drop)")
            )
        if self.latency:
            text.append(
                f"latency: onnxruntime CPU, batch {self.latency['batch']}, "
                f"{self.latency['threads']} thread(s), median of {self.latency['runs']}"
            )
        return "\n".join(text)


def _lookup(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def exporter_version() -> str:
    import onnxruntime
    import tf2onnx

    return (
        f"segen-edge {__version__} "
        f"(tf2onnx {tf2onnx.__version__}, onnxruntime {onnxruntime.__version__})"
    )


def cpu_description() -> str:
    """The CPU's model name and the SIMD features that decide int8 speed on x86."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                      if ln.startswith("flags")), []))
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(simd) or 'no AVX2'}; {os.cpu_count()} cores)"


def export_run(
    options: ExportOptions, progress: Callable[[str], None] = lambda _: None
) -> ExportReport:
    """Run the whole export; raise a SegenError (one clear line) when something is wrong."""
    bad = [p for p in options.precisions if p not in PRECISIONS]
    if bad or not options.precisions:
        raise ExportError(
            f"--precision {','.join(options.precisions)}: expected a comma-separated list of "
            f"{', '.join(PRECISIONS)}"
        )
    run_info = load_run(options.run_dir)
    name = options.name or run_info.name
    out_dir = options.out_dir or run_info.path / "onnx"
    targets = {p: out_dir / f"{name}-{p}.onnx" for p in options.precisions}
    report_path = out_dir / f"{name}-export.json"
    existing = [p for p in [*targets.values(), report_path] if p.exists()]
    if existing and not options.overwrite:
        raise ExportError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    info = run_info.info.replace(name=name, layout=options.layout)
    segment = info.task == "segment"

    # Everything that reads user data first, so a bad folder fails in seconds.
    held = load_held_out(run_info, options.eval_limit)
    progress(f"evaluation data: {held.note}")
    calib: np.ndarray | None = None
    calibration: dict[str, Any] = {}
    if "int8" in options.precisions:
        calib, calibration = _calibration_data(options, run_info.card, info, held)
        progress(f"calibration: {calibration['count']} {calibration['kind']}")

    progress(f"loading {run_info.model_path}")
    keras_model = load_keras(run_info.model_path)
    proto = convert(keras_model, info, options.layout, dynamic_size=segment)
    dynamic = segment and accepts_other_sizes(proto, info)
    if segment and not dynamic:
        progress("the network does not accept other sizes: exporting at its fixed image size")
        proto = convert(keras_model, info, options.layout, dynamic_size=False)
    diff = verify(keras_model, proto, held.inputs[:8], info, options.tolerance)
    progress(f"fp32 ONNX matches Keras: max |diff| {diff:.2g} on {min(8, len(held.inputs))} inputs")
    del keras_model

    report = ExportReport(
        name, info.task, options.layout, dynamic, diff, held.note,
        calibration=calibration, command=options.command,
    )
    reference = run(make_session(proto), held.inputs, info)
    reference_labels = class_maps(reference) if segment else None
    fp32_u8 = None if segment else to_pixels(reference, info)

    def measure(model: Any, full: bool = True) -> dict[str, Any]:
        """Held-out figures; `full=False` skips the (slow) GAN quality score."""
        outputs = run(make_session(model), held.inputs, info)
        if segment:
            return segment_metrics(outputs, held, info, reference_labels)
        return generator_metrics(outputs, info, fp32_u8, run_info if full else None)

    models: dict[str, Any] = {"fp32": proto}
    metrics: dict[str, dict[str, Any]] = {"fp32": measure(proto)}
    progress(f"fp32: {metrics['fp32']}")
    if "fp16" in options.precisions:
        models["fp16"] = to_fp16(proto)
        metrics["fp16"] = measure(models["fp16"])
        progress(f"fp16: {metrics['fp16']}")
    if calib is not None:
        result, speed, report.layers = _int8(
            proto, calib, info, options, metrics["fp32"], measure, progress
        )
        if speed is not None:
            report.speed_nodes, report.speed_timings = speed.exclude, speed.timings_ms
        models["int8"] = result.model
        metrics["int8"] = result.metrics if segment else measure(result.model)
        report.excluded_nodes = result.excluded
        report.sensitivity = result.sensitivity
        report.within_budget = result.within_budget
        progress(f"int8: {metrics['int8']}")

    progress("timing")
    sample = held.inputs[:1]
    latency = measure_latency(models, sample, info, runs=options.latency_runs)
    report.latency = {
        "batch": 1, "threads": 1, "runs": options.latency_runs,
        "cpu": cpu_description(), "provider": "CPUExecutionProvider",
    }
    for precision in models:
        report.rows.append(
            Row(precision, targets.get(precision), len(models[precision].SerializeToString()),
                metrics[precision], latency[precision])
        )
    _write(models, targets, info, run_info.card, report)
    atomic_write(report_path, lambda fh: fh.write(_json(report.to_json()).encode("utf-8")))
    os.chmod(report_path, 0o644)
    report.report_path = report_path
    return report


def _calibration_data(
    options: ExportOptions, card: dict[str, Any], info: ModelInfo, held: HeldOut
) -> tuple[np.ndarray, dict[str, Any]]:
    count = options.calib_count
    if info.task == "generate":
        latents = latent_samples(info, count, CALIBRATION_SEED)
        meta = {"method": options.calib_method, "count": count, "kind": "latent vectors",
                "reduce_range": options.reduce_range,
                "seed": CALIBRATION_SEED}
        return latents, meta
    calib_dir = options.calib_dir or card.get("data")
    if not calib_dir:
        raise ExportError("the run's card names no training data; give --calib DIR")
    paths = calibration_paths(calib_dir, count, CALIBRATION_SEED, exclude=held.paths)
    meta = {"method": options.calib_method, "count": len(paths), "kind": "images",
            "reduce_range": options.reduce_range,
            "source": str(calib_dir), "seed": CALIBRATION_SEED,
            "held_out_excluded": bool(held.stems)}
    return load_calibration(paths, info), meta


def _int8(
    proto: Any,
    calib: np.ndarray,
    info: ModelInfo,
    options: ExportOptions,
    fp32_metrics: dict[str, Any],
    measure: Callable[..., dict[str, Any]],
    progress: Callable[[str], None],
) -> tuple[Int8Result, SpeedChoice | None, dict[str, str]]:
    reader = ArrayReader(proto.graph.input[0].name, calib, info)
    with tempfile.TemporaryDirectory(prefix="segen-int8-") as workdir:
        quantizer = Int8Quantizer(
            proto, reader, options.calib_method, workdir, reduce_range=options.reduce_range
        )
        probe = calib[:SENSITIVITY_SAMPLES]
        probe_reference = run(make_session(proto), probe, info)

        def drop_of(model: Any) -> tuple[float, dict[str, Any]]:
            got = measure(model, full=False)
            if info.task == "segment":
                return float(fp32_metrics["miou"]) - float(got["miou"]), got
            return float(got["mean_abs_diff"]) / 255.0, got  # fraction of the pixel range

        def rank() -> list[tuple[str, float]]:
            return rank_sensitivity(quantizer, probe, probe_reference, info, progress)

        speed = None
        if options.speed_search:
            speed = choose_for_speed(quantizer, proto, calib, info, progress=progress)
        result = quantize_within_budget(
            quantizer, drop_of, options.max_drop, rank, progress,
            base_exclude=speed.exclude if speed else (),
        )
        return result, speed, quantizer.labels


def _write(
    models: dict[str, Any],
    targets: dict[str, Path],
    info: ModelInfo,
    card: dict[str, Any],
    report: ExportReport,
) -> None:
    """Stamp every asked-for model with the metadata and write it atomically. The card holds
    each file's own size, so stamping repeats until the size it records is the size it has."""
    rows = {r.precision: r for r in report.rows}
    version = exporter_version()
    for _ in range(4):
        blobs = {}
        for precision in targets:
            stamped = info.replace(
                precision=precision,
                exporter_version=version,
                card={**card, "export": report.card()},
            )
            stamp_onnx(models[precision], stamped)
            blobs[precision] = models[precision].SerializeToString()
        changed = False
        for precision, blob in blobs.items():
            if rows[precision].size_bytes != len(blob):
                rows[precision].size_bytes = len(blob)
                changed = True
        if not changed:
            break
    for precision, path in targets.items():
        blob = blobs[precision]
        atomic_write(path, lambda fh, data=blob: fh.write(data))
        os.chmod(path, 0o644)  # a model is meant to be read by others (mkstemp made it 0600)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str) + "\n"
