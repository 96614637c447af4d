"""Export a training run: convert, verify, quantize, evaluate, time, stamp, write.

fp32 is always built (it is the reference every other precision is measured against) even
when it is not asked for; only the asked-for precisions are written. Every file carries the
`segen.*` metadata with the run's training card plus an `export` section holding the figures
measured here for all precisions.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from segen_edge import __version__
from segen_edge.files import atomic_write
from segen_edge.metadata import PRECISIONS, ModelInfo, stamp_onnx
from segen_edge.providers import has_vnni
from segen_edge.segment import Segmenter

from .calibrate import (
    METHODS,
    ArrayReader,
    calibration_paths,
    latent_samples,
    load_calibration,
)
from .convert import TOLERANCE, accepts_other_sizes, convert, load_keras, probe_size, verify
from .errors import ExportError
from .evaluate import HeldOut, generator_metrics, load_held_out, segment_metrics
from .measure import BF16, bf16_here, latency, predictions, providers_here, raw_outputs, runtime_model
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
from .simplify import simplify

SENSITIVITY_SAMPLES = 16
SIMPLIFY_TOLERANCE = 1e-5  # a graph rewrite's float32 reassociation, relative to the output's scale
CALIBRATION_SEED = 0
LATENCY_BATCH = 8
OV_INT8 = "int8.openvino"  # the int8 file made for OpenVINO: <name>-int8.openvino.onnx


@dataclass(frozen=True)
class ExportOptions:
    run_dir: Path
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calib_dir: Path | None = None  # None: the training data named in the card
    calib_count: int = 100
    calib_method: str = "minmax"
    out_dir: Path | None = None  # None: RUN_DIR/onnx
    max_drop: float = 0.01
    reduce_range: bool | None = None  # 7-bit weights; None: where the CPU has no VNNI
    speed_search: bool = True  # leave high-resolution layers in float where int8 is slower
    simplify: bool = True  # kernel == stride up-convolutions as Conv 1x1 + DepthToSpace
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
    graph: str = ""  # what the graph rewrites did
    rows: list[Row] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    excluded_nodes: list[str] = field(default_factory=list)  # in float for accuracy
    speed_nodes: list[str] = field(default_factory=list)  # in float for speed
    speed_timings: dict[str, float] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)  # ONNX node -> Keras layer
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    within_budget: bool = True
    latency: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, Any] = field(default_factory=dict)  # per provider: precision rows
    openvino_int8: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    report_path: Path | None = None

    def card(self) -> dict[str, Any]:
        """The `export` section of every file's card."""
        return {
            "exporter": exporter_version(),
            "layout": self.layout,
            "dynamic_size": self.dynamic_size,
            "verified_max_abs_diff": self.verify_max_diff,
            "graph": self.graph,
            "held_out": self.held_out,
            "precisions": {
                r.precision: {k: v for k, v in r.to_json().items() if k not in ("precision", "file")}
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
            "providers": self.providers,
            "openvino_int8": self.openvino_int8,
            "command": self.command,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            **self.card(),
            "precisions": [r.to_json() for r in self.rows],
            "sensitivity": [[n, self.layers.get(n, n), round(s, 6)] for n, s in self.sensitivity[:20]],
        }

    def table(self) -> str:
        """A short plain-text table of the figures."""
        fp32 = next((r for r in self.rows if r.precision == "fp32"), None)
        if self.task == "segment":
            quality_cols = [("mIoU", "miou"), ("agree", "agreement")]
        else:
            quality_cols = [
                ("MAD", "mean_abs_diff"),
                ("FD", "quality.frechet_distance"),
                ("confident", "quality.confident_fraction"),
            ]
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
        if self.graph:
            text.append(f"graph: {self.graph}")
        text += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
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
        for provider, entry in self.providers.items():
            rows = entry.get("precisions", {})
            if not rows:
                text.append(f"{provider}: not measured ({entry.get('note', '')})")
                continue
            cells = []
            for precision, row in rows.items():
                ms = row["latency_ms"]
                quality = row["metrics"].get("agreement", row["metrics"].get("mean_abs_diff"))
                flag = "" if row["within_budget"] else " OVER BUDGET"
                cells.append(
                    f"{precision} {ms.get('1', 0):.2f}/{ms.get(str(LATENCY_BATCH), 0):.2f} ms "
                    f"({_fmt(quality)}){flag}"
                )
            text.append(f"{provider} (batch 1/{LATENCY_BATCH}, agreement or |px diff|): " + "; ".join(cells))
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

    return f"segen-edge {__version__} (tf2onnx {tf2onnx.__version__}, onnxruntime {onnxruntime.__version__})"


def cpu_description() -> str:
    """The CPU's model name and the SIMD features that decide int8 speed on x86."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
        platform.machine(),
    )
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(simd) or 'no AVX2'}; {os.cpu_count()} cores)"


def export_run(options: ExportOptions, progress: Callable[[str], None] = lambda _: None) -> ExportReport:
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
    providers = providers_here()
    targets = {p: out_dir / f"{name}-{p}.onnx" for p in options.precisions}
    if "int8" in options.precisions and "openvino" in providers:
        targets[OV_INT8] = out_dir / f"{name}-{OV_INT8}.onnx"
    report_path = out_dir / f"{name}-export.json"
    existing = [p for p in [*targets.values(), report_path] if p.exists()]
    if existing and not options.overwrite:
        raise ExportError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    info = run_info.info.replace(name=name, layout=options.layout)
    segment = info.task == "segment"
    reduce_range = not has_vnni() if options.reduce_range is None else options.reduce_range

    # Everything that reads user data first, so a bad folder fails in seconds.
    held = load_held_out(run_info, options.eval_limit)
    progress(f"evaluation data: {held.note}")
    calib: np.ndarray | None = None
    calibration: dict[str, Any] = {}
    if "int8" in options.precisions:
        calib, calibration = _calibration_data(options, run_info.card, info, held, reduce_range)
        progress(f"calibration: {calibration['count']} {calibration['kind']}")

    progress(f"loading {run_info.model_path}")
    keras_model = load_keras(run_info.model_path)
    proto = convert(keras_model, info, options.layout, dynamic_size=segment)
    dynamic = segment and accepts_other_sizes(proto, info)
    if segment and not dynamic:
        progress("the network does not accept other sizes: exporting at its fixed image size")
        proto = convert(keras_model, info, options.layout, dynamic_size=False)
    graph_note = "as converted"
    if options.simplify:
        proto, graph_note = simplify(proto, _same_as(proto, held.inputs[:4], info, dynamic))
        progress(f"graph: {graph_note}")
    diff = verify(keras_model, proto, held.inputs[:8], info, options.tolerance)
    progress(f"fp32 ONNX matches Keras: max |diff| {diff:.2g} on {min(8, len(held.inputs))} inputs")
    del keras_model

    report = ExportReport(
        name,
        info.task,
        options.layout,
        dynamic,
        diff,
        held.note,
        graph=graph_note,
        calibration=calibration,
        command=options.command,
    )

    def predict(model: Any, provider: str = "cpu", bf16: bool = False) -> Any:
        """What the runtime makes of the held-out inputs: for tile and native models the
        whole images in their mode at their own size, else the model-size batch."""
        runtime = runtime_model(model, info, provider, bf16=bf16)
        if held.images and isinstance(runtime, Segmenter):
            return [s.ids for s in runtime.segment_arrays(held.images, runtime.settings())]
        return predictions(runtime, held.inputs)

    reference = predict(proto)

    def measure(model: Any, full: bool = True, provider: str = "cpu", bf16: bool = False) -> dict[str, Any]:
        """Held-out figures through the runtime on `provider`; `full=False` skips the
        (slow) GAN quality score."""
        got = predict(model, provider, bf16)
        if segment:
            return segment_metrics(got, held, info, reference)
        return generator_metrics(got, reference, run_info if full else None)

    models: dict[str, Any] = {"fp32": proto}
    metrics: dict[str, dict[str, Any]] = {"fp32": measure(proto)}
    progress(f"fp32: {metrics['fp32']}")
    if "fp16" in options.precisions:
        models["fp16"] = to_fp16(proto)
        metrics["fp16"] = measure(models["fp16"])
        progress(f"fp16: {metrics['fp16']}")

    def drop(got: dict[str, Any]) -> float:
        if segment:
            return float(metrics["fp32"]["miou"]) - float(got["miou"])
        return float(got["mean_abs_diff"]) / 255.0  # fraction of the pixel range

    if calib is not None:
        result, speed, report.layers = _int8(
            proto, calib, info, options, reduce_range, measure, drop, progress
        )
        if speed is not None:
            report.speed_nodes, report.speed_timings = speed.exclude, speed.timings_ms
        models["int8"] = result.model
        metrics["int8"] = result.metrics if segment else measure(result.model)
        report.excluded_nodes = result.excluded
        report.sensitivity = result.sensitivity
        report.within_budget = result.within_budget
        calibration.update(method=result.method, methods_tried=result.methods_tried)
        if not result.within_budget:
            progress(f"int8: OVER BUDGET: drop {result.drop:.4f} > --max-drop {options.max_drop}")
        progress(f"int8: {metrics['int8']}")
        if OV_INT8 in targets:
            progress("int8 for OpenVINO: symmetric, per channel, full 8-bit weights")
            ov_result = _int8_openvino(proto, calib, info, options, measure, drop, progress)
            models[OV_INT8] = ov_result.model
            report.openvino_int8 = {
                "method": ov_result.method,
                "methods_tried": ov_result.methods_tried,
                "excluded_nodes": ov_result.excluded,
                "within_budget": ov_result.within_budget,
                "reduce_range": False,
                "activations": "int8 symmetric",
            }

    progress("timing")
    report.providers = _per_provider(models, held, info, options, measure, drop, progress)
    cpu_rows = report.providers["cpu"]["precisions"]
    report.latency = {
        "batch": 1,
        "threads": 1,
        "runs": options.latency_runs,
        "cpu": cpu_description(),
        "provider": "CPUExecutionProvider",
    }
    for precision in models:
        latency = cpu_rows.get(precision, {}).get("latency_ms", {}).get("1")
        row_metrics = metrics.get(precision) or report.providers["openvino"]["precisions"].get(
            precision, {}
        ).get("metrics", {})
        report.rows.append(
            Row(
                precision,
                targets.get(precision),
                len(models[precision].SerializeToString()),
                row_metrics,
                latency,
            )
        )
    _write(models, targets, info, run_info.card, report)
    atomic_write(report_path, lambda fh: fh.write(_json(report.to_json()).encode("utf-8")))
    os.chmod(report_path, 0o644)
    report.report_path = report_path
    return report


def _same_as(reference: Any, inputs: np.ndarray, info: ModelInfo, dynamic: bool) -> Callable[[Any], bool]:
    """A check that a rewritten graph computes what `reference` does: on `inputs` at the
    model's size and, for a size-agnostic graph, on a random image of another size."""
    cases = [(info, inputs)]
    if dynamic:
        height, width = probe_size(info)
        noise = np.random.default_rng(0).integers(0, 256, (1, height, width, info.channels), dtype=np.uint8)
        cases.append((info.replace(image_size=(height, width)), noise))
    wanted: list[np.ndarray] = []  # the reference's outputs, run once at the first check

    def same(candidate: Any) -> bool:
        if not wanted:
            wanted.extend(raw_outputs(runtime_model(reference, i), batch) for i, batch in cases)
        for (case_info, batch), want in zip(cases, wanted, strict=True):
            got = raw_outputs(runtime_model(candidate, case_info), batch)
            scale = max(1.0, float(np.abs(want).max()))
            if got.shape != want.shape or not np.abs(got - want).max() <= SIMPLIFY_TOLERANCE * scale:
                return False
        return True

    return same


def _variants(provider: str, models: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """What runs on `provider`: precision -> (the file variant it runs, bf16 hint)."""
    out = {p: (p, False) for p in models if p != OV_INT8}
    if provider in ("openvino", "openvino-runtime"):
        if OV_INT8 in models and provider == "openvino":
            out[OV_INT8] = (OV_INT8, False)
        if bf16_here(provider):
            out[BF16] = ("fp32", True)
    return out


def _per_provider(
    models: dict[str, Any],
    held: HeldOut,
    info: ModelInfo,
    options: ExportOptions,
    measure: Callable[..., dict[str, Any]],
    drop: Callable[[dict[str, Any]], float],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Latency (batch 1 and LATENCY_BATCH) and agreement of each precision on each provider
    here, through the runtime, and whether it passed its agreement check there."""
    out: dict[str, Any] = {}
    for provider in providers_here():
        variants = _variants(provider, models)
        rows: dict[str, Any] = {}
        for precision, (file, bf16) in variants.items():
            got = measure(models[file], full=False, provider=provider, bf16=bf16)
            lost = drop(got)
            rows[precision] = {
                "file": file,
                "bf16": bf16,
                "metrics": got,
                "drop": round(lost, 6),
                "within_budget": lost <= options.max_drop,
                "latency_ms": {},
            }
        for batch in (1, LATENCY_BATCH):
            sample = np.resize(held.inputs, (batch, *held.inputs.shape[1:]))
            runtime = {
                p: runtime_model(models[file], info, provider, bf16=bf16)
                for p, (file, bf16) in variants.items()
            }
            timed = latency(runtime, sample, runs=options.latency_runs)
            for precision, ms in timed.items():
                rows[precision]["latency_ms"][str(batch)] = ms
        progress(
            f"{provider}: "
            + ", ".join(
                f"{p} {r['latency_ms']['1']:.2f} ms" + ("" if r["within_budget"] else " (over budget)")
                for p, r in rows.items()
            )
        )
        out[provider] = {
            "threads": 1,
            "runs": options.latency_runs,
            "batches": [1, LATENCY_BATCH],
            "cpu": cpu_description(),
            "precisions": rows,
        }
    out.setdefault("openvino", {"precisions": {}, "note": "onnxruntime-openvino not installed"})
    return out


def _calibration_data(
    options: ExportOptions,
    card: dict[str, Any],
    info: ModelInfo,
    held: HeldOut,
    reduce_range: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    count = options.calib_count
    why = (
        "7-bit weights: this CPU has no VNNI, where onnxruntime's u8s8 kernels saturate"
        if reduce_range
        else "full 8-bit weights"
    )
    if options.reduce_range is None:
        why += " (chosen for this CPU)"
    common = {
        "method": options.calib_method,
        "reduce_range": reduce_range,
        "reduce_range_why": why,
        "cpu": cpu_description(),
    }
    if info.task == "generate":
        latents = latent_samples(info, count, CALIBRATION_SEED)
        meta = {**common, "count": count, "kind": "latent vectors", "seed": CALIBRATION_SEED}
        return latents, meta
    calib_dir = options.calib_dir or card.get("data")
    if not calib_dir:
        raise ExportError("the run's card names no training data; give --calib DIR")
    paths = calibration_paths(calib_dir, count, CALIBRATION_SEED, exclude=held.paths)
    meta = {
        **common,
        "count": len(paths),
        "kind": "images",
        "source": str(calib_dir),
        "seed": CALIBRATION_SEED,
        "held_out_excluded": bool(held.stems),
    }
    return load_calibration(paths, info), meta


def _drop_of(
    measure: Callable[..., dict[str, Any]],
    drop: Callable[[dict[str, Any]], float],
    provider: str,
) -> Callable[[Any], tuple[float, dict[str, Any]]]:
    def drop_of(model: Any) -> tuple[float, dict[str, Any]]:
        got = measure(model, full=False, provider=provider)
        return drop(got), got

    return drop_of


def _int8(
    proto: Any,
    calib: np.ndarray,
    info: ModelInfo,
    options: ExportOptions,
    reduce_range: bool,
    measure: Callable[..., dict[str, Any]],
    drop: Callable[[dict[str, Any]], float],
    progress: Callable[[str], None],
) -> tuple[Int8Result, SpeedChoice | None, dict[str, str]]:
    """The int8 file for onnxruntime's CPU EP: speed search, then the accuracy gate."""
    reader = ArrayReader(proto.graph.input[0].name, calib, info)
    with tempfile.TemporaryDirectory(prefix="segen-int8-") as workdir:
        quantizer = Int8Quantizer(proto, reader, options.calib_method, workdir, reduce_range=reduce_range)
        probe = calib[:SENSITIVITY_SAMPLES]
        probe_reference = raw_outputs(runtime_model(proto, info), probe)

        def rank() -> list[tuple[str, float]]:
            return rank_sensitivity(quantizer, probe, probe_reference, info, progress)

        speed = None
        if options.speed_search:
            speed = choose_for_speed(quantizer, proto, calib, info, progress=progress)
        result = quantize_within_budget(
            quantizer,
            _drop_of(measure, drop, "cpu"),
            options.max_drop,
            rank,
            progress,
            base_exclude=speed.exclude if speed else (),
            methods=METHODS,
        )
        return result, speed, quantizer.labels


def _int8_openvino(
    proto: Any,
    calib: np.ndarray,
    info: ModelInfo,
    options: ExportOptions,
    measure: Callable[..., dict[str, Any]],
    drop: Callable[[dict[str, Any]], float],
    progress: Callable[[str], None],
) -> Int8Result:
    """The int8 file for OpenVINO: symmetric weights and activations, per channel, full 8
    bits, checked against fp32 under OpenVINO (its kernels differ from the CPU EP's)."""
    reader = ArrayReader(proto.graph.input[0].name, calib, info)
    with tempfile.TemporaryDirectory(prefix="segen-int8-ov-") as workdir:
        quantizer = Int8Quantizer(
            proto,
            reader,
            options.calib_method,
            workdir,
            reduce_range=False,
            symmetric_activations=True,
        )
        probe = calib[:SENSITIVITY_SAMPLES]
        probe_reference = raw_outputs(runtime_model(proto, info), probe)

        def rank() -> list[tuple[str, float]]:
            return rank_sensitivity(quantizer, probe, probe_reference, info, progress, provider="openvino")

        return quantize_within_budget(
            quantizer,
            _drop_of(measure, drop, "openvino"),
            options.max_drop,
            rank,
            progress,
            methods=METHODS,
        )


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
                precision=precision.split(".")[0],  # int8.openvino holds an int8 model
                exporter_version=version,
                card=portable_card({**card, "export": report.card()}),
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
        atomic_write(path, functools.partial(_write_bytes, data=blobs[precision]))
        os.chmod(path, 0o644)  # a model is meant to be read by others (mkstemp made it 0600)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str) + "\n"


def _write_bytes(fh: IO[bytes], data: bytes) -> None:
    fh.write(data)


def portable_card(card: Any, root: Path | None = None) -> Any:
    """The card with no absolute path of the machine it was made on: a path inside the
    project becomes relative to it, any other (a data set folder) its last component, the
    name `segen-edge evaluate` looks for under $SEGEN_EDGE_DATA or ../shared/data."""
    root = root or Path(__file__).resolve().parents[1]
    if isinstance(card, dict):
        return {k: portable_card(v, root) for k, v in card.items()}
    if isinstance(card, list):
        return [portable_card(v, root) for v in card]
    if isinstance(card, str) and card.startswith("/") and "\n" not in card and len(card) < 4096:
        path = Path(card)
        try:
            return str(path.relative_to(root))
        except ValueError:
            return path.name
    return card
