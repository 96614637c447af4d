"""Typed factories: a bundled name, an ONNX path or the bytes of one -> Segmenter or Generator.

Everything a model needs to be run is settled here, once: the device and precision are
validated, the file is read (a regular file, never a pipe), its `segen.*` metadata is read,
and for a file made by another tool the graph itself says what it can (task, layout,
channels, fixed sizes, whether it ends in logits, probabilities or class ids); the caller's
overrides fill in or replace the rest. The runtime chooses its path by task, never by
architecture.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import zoo
from .checks import whole
from .errors import BadInputError, MetadataError, ModelError
from .generate import Generator
from .graph import GraphSummary, infer_description, summarize
from .masks import default_palette
from .metadata import LAYOUTS, MODES, OUTPUTS, PREFIX, ModelInfo
from .model import Model, feed_type
from .onnxmeta import read_model_bytes
from .pipeline import cpu_count
from .providers import CPU_ENGINES, cpu_providers, cuda_available
from .segment import Segmenter
from .session import Device, LoadedSession, create_session

log = logging.getLogger("segen_edge")

PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8", "bf16")
FEW_RUNS = 64  # a job of at most this many runs: auto weighs cold starts (see _for_job)
Source = str | os.PathLike[str] | bytes

# What `overrides` may describe (the same names as the CLI's description flags).
OVERRIDE_KEYS = (
    "task",
    "image_size",
    "layout",
    "channels",
    "pixel_scale",
    "pixel_offset",
    "mean",
    "std",
    "class_names",
    "palette",
    "latent_size",
    "output",
    "mode",
    "tile_size",
    "overlap",
    "keep_aspect",
    "stride",
    "name",
)


def load(
    source: Source | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    task: str | None = None,
    batch_size: int = 1,
    streams: int | None = None,
    runs: int | None = None,
    **overrides: Any,
) -> Segmenter | Generator:
    """Load a model: a Segmenter or a Generator, by the model's task.

    `source` is a bundled name (`segen-edge models`), a path to an ONNX file, or its bytes;
    None loads the default model of `task`. `overrides` describe a file without segen
    metadata, or replace what it says: image_size=(h, w), layout="NCHW", mean=(...),
    std=(...) or pixel_scale/pixel_offset, class_names=[...], palette=[...],
    latent_size=..., output="logits"|"probs"|"ids", mode="resize"|"tile"|"native", ...

    precision="auto" takes the file the export measured fastest on the provider the device
    gets, at the measured batch nearest `batch_size`, among those within their accuracy
    budget there; "bf16" runs the fp32 file in bfloat16 under OpenVINO where the CPU has
    it. `streams`: OpenVINO streams for batch jobs. `runs`: how many runs the job will make,
    where known: for a short job (one photo) `auto` weighs each engine's cold start, where
    the card records them, against what its faster runs save.

    >>> import segen_edge
    >>> with segen_edge.load("unet-pets") as model:
    ...     print(type(model).__name__, model.info.class_names)
    Segmenter ('pet', 'background', 'border')
    """
    device_ = _device(device)
    precision = _precision(precision)
    threads = check_threads(threads)
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise TypeError(
            f"load() got unknown description {', '.join(unknown)}; known: {', '.join(OVERRIDE_KEYS)}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    data, label, bf16, device_ = _read(source, task, precision, device_, batch_size, threads, runs)
    graph = summarize(data, label)
    info = describe(graph, given, label)
    if task is not None and info.task != task:
        verb = "generate" if info.task == "generate" else "segment"
        raise ModelError(
            f"{label}: is a {info.task} model ({info.arch}), not a {task} model; "
            f"use 'segen-edge {verb}' (segen_edge.load_{'generator' if verb == 'generate' else 'segmenter'})"
            f" with it, or pick a {task} model (segen-edge models)"
        )
    if precision not in ("auto", "bf16") and precision != info.precision:
        raise ModelError(
            f"{label}: asked for precision {precision} but the file holds a {info.precision} model"
        )
    where = data if isinstance(source, (bytes, bytearray, memoryview)) else Path(label)
    loaded = create_session(where, device_, threads=threads, streams=streams, bf16=bf16)
    info = _complete(loaded, info, graph, given, label)
    _check_io(loaded, info, label)
    if info.precision == "int8" and loaded.provider == "cuda":
        log.warning(
            "%s is int8 and onnxruntime's CUDA provider has few int8 kernels; "
            "use precision fp16 or fp32 on a GPU",
            label,
        )
    log.info(
        "running %s on %s%s, %s",
        Path(label).name,
        loaded.provider,
        " in bf16" if loaded.bf16 else "",
        f"{threads} thread{'s' if threads != 1 else ''} per run" if threads else "every core per run",
    )
    model: Model = Segmenter(loaded, info) if info.task == "segment" else Generator(loaded, info)
    return model  # type: ignore[return-value]


def load_segmenter(source: Source | None = None, **kwargs: Any) -> Segmenter:
    """load() for a segmentation model; a generator is a ModelError that says so.

    >>> seg = segen_edge.load_segmenter("unet-pets", precision="fp32")
    """
    model = load(source, task="segment", **kwargs)
    assert isinstance(model, Segmenter)  # load() checked the task
    return model


def load_generator(source: Source | None = None, **kwargs: Any) -> Generator:
    """load() for a generative model; a segmenter is a ModelError that says so.

    >>> gen = segen_edge.load_generator("dcgan-mnist")
    """
    model = load(source, task="generate", **kwargs)
    assert isinstance(model, Generator)
    return model


# -- checks made once ------------------------------------------------------------------------


def _device(device: str | Device) -> Device:
    try:
        return Device(device)
    except ValueError:
        choices = ", ".join(d.value for d in Device)
        raise BadInputError(f"device {device!r}: expected one of {choices}") from None


def _precision(precision: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise BadInputError(f"precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    return precision


def max_threads() -> int:
    return 4 * cpu_count()


def check_threads(threads: int | None) -> int | None:
    """None (onnxruntime's default) or 1..4x the cores; more only makes a run slower."""
    if threads is None:
        return None
    return whole(threads, "--threads", 1, max_threads(), hint=f" (this machine has {cpu_count()} cores)")


def probe_provider(device: Device) -> str:
    """The provider `device` will most likely get, to pick a precision before loading."""
    if device is Device.auto:
        if cuda_available():
            return "cuda"
        return "cpu-auto"  # one of the CPU engines, settled by measurements (_read)
    return device.value


def _read(
    source: Source | None,
    task: str | None,
    precision: str,
    device: Device,
    batch_size: int,
    threads: int | None = None,
    runs: int | None = None,
) -> tuple[bytes, str, bool, Device]:
    """The model's bytes, a label for messages (its path), whether to run it in bf16, and
    the device to open it on (for `auto`, settled here from measurements)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>", precision == "bf16", device
    ref = zoo.resolve(None if source is None else os.fspath(source), task or "segment")
    provider = probe_provider(device)
    if provider != "cpu-auto":
        return _settle(ref, device, provider, [provider], precision, batch_size, threads)
    # OpenVINO's runtime is listed when installed, and imported (~0.2 s) only where auto
    # would take it: a run that ends on onnxruntime never pays for it
    engines = _for_job(ref, cpu_providers(confirmed=False), precision, batch_size, runs)
    while True:
        settled = _settle(ref, device, provider, engines, precision, batch_size, threads)
        if settled[3] is not Device.openvino_runtime or _openvino_usable():
            return settled
        engines.remove("openvino-runtime")  # installed but broken: as if it were not there


def _settle(
    ref: zoo.ModelRef,
    device: Device,
    provider: str,
    engines: list[str],
    precision: str,
    batch_size: int,
    threads: int | None,
) -> tuple[bytes, str, bool, Device]:
    tuned = _tuned(ref, device, engines, precision, batch_size, threads)
    if tuned is not None:
        log.info("%s: %s %s, the fastest `segen-edge tune` timed here", ref.name, *tuned[:2])
        return read_model_bytes(tuned[2].path), str(tuned[2].path), tuned[2].bf16, Device(tuned[0])
    chosen = precision == "auto" or provider == "cpu-auto"  # something for --verbose to tell
    if provider == "cpu-auto":
        provider = _auto_cpu_provider(ref, engines, precision, batch_size)
        device = Device(provider)
    choice = ref.choose(precision, provider, batch_size)
    if chosen:
        log.info("%s: %s", ref.name, _why(choice, provider, batch_size))
    return read_model_bytes(choice.path), str(choice.path), choice.bf16, device


def _why(choice: zoo.Choice, provider: str, batch_size: int) -> str:
    """What auto chose on `provider`, and from what (for --verbose)."""
    if choice.latency_ms is None:
        return f"the {choice.precision} file on {provider} (the model's card has no figures for it there)"
    return (
        f"the {choice.precision} file on {provider}, the fastest within its accuracy budget in the "
        f"model's measurements ({choice.latency_ms:.3g} ms at the batch nearest {batch_size}; "
        "`segen-edge tune` times it on this machine)"
    )


def _for_job(
    ref: zoo.ModelRef, engines: list[str], precision: str, batch_size: int, runs: int | None
) -> list[str]:
    """For a job of a few `runs` (one photo), the one engine whose cold start plus `runs`
    runs the card measures shortest, where it records every engine's cold start (OpenVINO's
    import and compilation can cost more than its faster runs save in a short job); else
    `engines`, for auto to choose by run time alone (and by this machine's `tune` record,
    which holds no cold starts: beyond FEW_RUNS runs cold start is noise beside it)."""
    if runs is None or runs > FEW_RUNS or len(engines) < 2:
        return engines
    costs = {}
    for engine in engines:
        choice = ref.choose(precision, engine, batch_size)
        if choice.latency_ms is None or choice.cold_ms is None:
            return engines
        costs[engine] = choice.cold_ms + runs * choice.latency_ms
    fastest = min(costs, key=lambda e: costs[e])
    log.info(
        "%s: %s for a job of %d run%s (cold start + runs, by the model's measurements: %s)",
        ref.name, fastest, runs, "s" if runs != 1 else "",
        ", ".join(f"{e} {ms:.0f} ms" for e, ms in costs.items()),
    )  # fmt: skip
    return [fastest]


def _openvino_usable() -> bool:
    from . import openvino_runtime

    return openvino_runtime.available()


def _tuned(
    ref: zoo.ModelRef,
    device: Device,
    engines: list[str],
    precision: str,
    batch_size: int,
    threads: int | None = None,
) -> tuple[str, str, zoo.Choice] | None:
    """(provider, precision, file) from this machine's `segen-edge tune` record, when the
    choice is auto's (the device, the precision or both) on the CPU engines `engines`."""
    if not set(engines) <= set(CPU_ENGINES) or (device is not Device.auto and precision != "auto"):
        return None
    if precision == "bf16" or not engines:
        return None
    from . import tuning

    found = tuning.best(ref, engines, batch_size, precision, threads)
    if found is None:
        return None
    cand, ms = found
    shown = cand.precision if cand.precision != "auto" else "its file"
    return cand.provider, shown, zoo.Choice(cand.precision, cand.path, cand.bf16, ms)


def _auto_cpu_provider(ref: zoo.ModelRef, engines: list[str], precision: str, batch_size: int) -> str:
    """The CPU engine for `--device auto` among those installed: the one whose best
    precision the export (or scripts/measure_providers.py) measured fastest at this batch
    size, among precisions within their accuracy budget there; an engine with no figures
    in the card is never taken on a guess. Without any figures, onnxruntime's CPU EP (or
    OpenVINO's runtime where onnxruntime is not installed). An int8 file tuned for the CPU
    EP can lose accuracy under OpenVINO (unet-membrane's agreed with fp32 on 59% of pixels
    under its EP), and an unmeasured choice must not be a worse one."""
    if not engines:
        return "cpu"
    fallback = "cpu" if "cpu" in engines else engines[0]
    measured = ref.measurements()
    best: tuple[float, str] | None = None
    for engine in engines:
        if engine != "cpu" and not measured.get(engine, {}).get("precisions"):
            continue
        ms = ref.choose(precision, engine, batch_size).latency_ms
        if ms is not None and (best is None or ms < best[0]):
            best = (ms, engine)
    return best[1] if best else fallback


# -- describing the model ----------------------------------------------------------------


def describe(graph: GraphSummary, overrides: Mapping[str, Any], label: str) -> ModelInfo:
    """ModelInfo from the file's segen metadata, else from what its graph states, with
    `overrides` on top; a bare file's missing essentials are named with the flag to pass."""
    props = graph.metadata
    if len(graph.inputs) > 1:
        names = ", ".join(t.name for t in graph.inputs)
        raise ModelError(
            f"{label}: the model takes {len(graph.inputs)} inputs ({names}); segen-edge feeds one, an "
            "image or a latent batch: export it with the others fixed (as constants) or folded in"
        )
    inferred = infer_description(graph)
    if any(k.startswith(PREFIX) for k in props):
        data = ModelInfo.from_props(props, source=label).to_dict()
    else:
        data = _bare(inferred, overrides, label, Path(label).stem if label != "<bytes>" else "model")
    data.update(_normalise(overrides, label))
    if "classes" in inferred and data.get("task") == "segment":  # the file's names or the user's
        _check_class_count(data, inferred["classes"], label)
    try:
        return ModelInfo.from_dict(data, source=label)
    except MetadataError:
        raise
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"{label}: {exc}") from None


def _bare(inferred: Mapping[str, Any], overrides: Mapping[str, Any], label: str, stem: str) -> dict[str, Any]:
    """Defaults for a file without segen metadata, from its graph, logged as assumptions."""
    task = overrides.get("task") or inferred.get("task")
    if task not in ("segment", "generate"):
        raise MetadataError(
            f"{label}: no segen.* metadata, and its input is not an image batch (rank 4) or a "
            "latent batch (rank 2); describe it with --task and --image-size (see segen-edge info)"
        )
    data: dict[str, Any] = {
        "task": task,
        "arch": "custom",
        "name": stem,
        "precision": inferred.get("precision", "fp32"),
    }
    for key in ("layout", "channels", "image_size", "latent_size", "output", "pixel_scale"):
        if key in inferred:
            data[key] = inferred[key]
    assumed = []
    if task == "segment":
        if "image_size" not in inferred and "image_size" not in overrides:
            if overrides.get("mode") == "native":
                data["image_size"] = (256, 256)  # only a sample size for bench; native runs at any
            else:
                raise MetadataError(
                    f"{label}: no segen.* metadata and its height and width are dynamic; pass "
                    "--image-size HEIGHT WIDTH (the size it was trained at; image_size=(h, w) in Python), or "
                    "segment / evaluate it at each image's own size with --mode native"
                )
        if "layout" not in inferred and "layout" not in overrides:
            raise MetadataError(
                f"{label}: no segen.* metadata and the input shape does not say where the "
                "channels are; pass --layout NCHW or --layout NHWC"
            )
        if "class_names" not in overrides:
            count = inferred.get("classes")
            if count is None:  # provisional: a probe run sets them once the session exists
                data["class_names"] = ("class0", "class1")
                data["palette"] = default_palette(2)
            else:
                data["class_names"] = default_class_names(count)
                data["palette"] = default_palette(len(data["class_names"]))
                assumed.append(f"classes {', '.join(data['class_names'])}")
    else:
        if "latent_size" not in inferred and "latent_size" not in overrides:
            raise MetadataError(
                f"{label}: no segen.* metadata and a dynamic latent size; pass --latent-size N"
            )
        if "image_size" not in overrides:
            data["image_size"] = (1, 1)  # a generator's size is whatever it makes
        unit = inferred.get("output_range") == "unit"  # the graph ends in a Sigmoid
        data["pixel_scale"], data["pixel_offset"] = (1 / 255, 0.0) if unit else (1 / 127.5, -1.0)
        if not {"pixel_scale", "mean"} & set(overrides):
            assumed.append("outputs in [0, 1] (sigmoid)" if unit else "outputs in [-1, 1] (tanh)")
    scaling = {"pixel_scale", "pixel_offset", "mean", "std"}
    if task == "segment" and not scaling & set(overrides) and "pixel_scale" not in inferred:
        assumed.append("pixels scaled to [0, 1]")
    if assumed:
        log.warning(
            "%s: no segen metadata; assumed %s. Pass --mean/--std (or --pixel-scale/--pixel-offset) "
            "and --class-names if these are wrong",
            label,
            "; ".join(assumed),
        )
    return data


def _normalise(overrides: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Overrides as ModelInfo values: sequences to tuples, checked choices, a palette."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in ("image_size", "tile_size", "mean", "std") and value is not None:
            value = tuple(value)
        if key == "class_names":
            value = tuple(str(v) for v in value)
            if "palette" not in overrides:
                out["palette"] = default_palette(len(value))
        if key == "palette":
            value = tuple(tuple(int(c) for c in colour) for colour in value)
        if key == "layout":
            value = str(value).upper()
            if value not in LAYOUTS:
                raise BadInputError(f"--layout {value}: expected NCHW or NHWC")
        if key == "mode" and value not in MODES:
            raise BadInputError(f"--mode {value}: expected one of {', '.join(MODES)}")
        if key == "output" and value not in OUTPUTS:
            raise BadInputError(f"--output-kind {value}: expected one of {', '.join(OUTPUTS)}")
        out[key] = value
    if "mean" in out or "std" in out:
        if "mean" not in out or "std" not in out:
            raise BadInputError(
                "--mean and --std go together; pass both (e.g. 0.485,0.456,0.406 and 0.229,0.224,0.225)"
            )
        out.setdefault("channels", len(out["mean"]))
    return out


BINARY = ("background", "foreground")  # the classes of a one-channel (sigmoid) output


def default_class_names(channels: int) -> tuple[str, ...]:
    """Names for a bare model's output channels: one channel is a binary model's
    foreground (background and foreground), else class0, class1, ..."""
    return BINARY if channels == 1 else tuple(f"class{i}" for i in range(channels))


def _check_class_count(data: Mapping[str, Any], classes: int, label: str) -> None:
    names = data.get("class_names") or ()
    if names and len(names) != classes and not (classes == 1 and len(names) == 2):
        raise ModelError(
            f"{label}: the model outputs {classes} classes but its metadata names {len(names)} "
            f"({', '.join(names)}); give one name per class (--class-names)"
        )


def _complete(
    loaded: LoadedSession, info: ModelInfo, graph: GraphSummary, overrides: Mapping[str, Any], label: str
) -> ModelInfo:
    """Facts only a run can tell, for a bare segmenter whose graph leaves its class count
    dynamic: one run on a blank image gives it (names assumed, or the given names checked)."""
    if info.task != "segment" or any(k.startswith(PREFIX) for k in graph.metadata):
        return info
    named = "class_names" in overrides
    if info.output == "ids":
        if named:
            return info
        raise MetadataError(
            f"{label}: the model returns class ids, which do not say how many classes there are; "
            "pass --class-names (one per class)"
        )
    if "classes" in infer_description(graph):
        return info
    shape = (
        (1, info.channels, *info.image_size)
        if info.layout == "NCHW"
        else (1, *info.image_size, info.channels)
    )
    try:
        blank = np.zeros(shape, feed_type(loaded.session.get_inputs()[0].type))
        out = loaded.session.run([loaded.output_name], {loaded.input_name: blank})[0]
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelError(
            f"{label}: could not run the model on a blank {list(shape)} input ({str(exc).strip()[:160]}); "
            "check --image-size and --layout"
        ) from None
    if out.ndim == 3 and np.issubdtype(out.dtype, np.floating):
        count = 1  # (N, h, w) floats: one foreground map, squeezed (a binary model)
    elif out.ndim != 4:
        if named:
            return info
        raise MetadataError(f"{label}: the model returns class ids; pass --class-names (one per class)")
    else:
        count = _class_count(out.shape, info.layout, info.image_size)
    if named:
        _check_class_count(info.to_dict(), count, label)
        return info
    names = default_class_names(count)
    log.warning("%s: no class names; assumed %s (pass --class-names)", label, ", ".join(names))
    return info.replace(class_names=names, palette=default_palette(len(names)))


def _class_count(shape: tuple[int, ...], layout: str, size: tuple[int, int]) -> int:
    """The class axis of a 4-d output from a run on an image of `size`: the axis beside the
    two that hold the image's height and width, where only one layout fits (an NHWC graph
    can return NCHW, as some converters make); else as the input's layout says."""
    channels_last = tuple(shape[1:3]) == tuple(size)
    channels_first = tuple(shape[2:4]) == tuple(size)
    if channels_first and not channels_last:
        return int(shape[1])
    if channels_last and not channels_first:
        return int(shape[3])
    return int(shape[1] if layout == "NCHW" else shape[3])


def _check_io(loaded: LoadedSession, info: ModelInfo, label: str) -> None:
    """The graph's input must fit what the description says to feed it (rank and static dims)."""
    shape = list(loaded.session.get_inputs()[0].shape)
    if info.task == "generate" and len(shape) == 4 and shape[2:] == [1, 1]:
        shape = shape[:2]  # latents as a (N, nz, 1, 1) image: fed reshaped (Model.run)
    if info.task == "generate":
        want = {"latent": info.latent_size}
        axes: tuple[str, ...] = ("latent",)
        fix = "fix segen.latent_size, or pass --latent-size"
    else:
        want = {"height": info.height, "width": info.width, "channels": info.channels}
        nchw = info.layout == "NCHW"
        axes = ("channels", "height", "width") if nchw else ("height", "width", "channels")
        fix = "pass --image-size, --layout or --channels to match the graph"
    if len(shape) != len(axes) + 1:
        expected = "(batch, " + ", ".join(axes) + ")"
        raise ModelError(f"{label}: input has shape {shape} but a {info.task} model takes {expected}")
    got = dict(zip(axes, shape[1:], strict=True))
    wrong = [k for k, v in got.items() if isinstance(v, int) and v > 0 and v != want[k]]
    if wrong:
        says = ", ".join(f"{k} {want[k]}" for k in wrong)
        raise ModelError(
            f"{label}: the graph takes input {shape} ({info.layout}) but its description says {says}; {fix}"
        )
    if (
        info.task == "segment"
        and info.mode == "native"
        and all(isinstance(v, int) and v > 0 for k, v in got.items() if k in ("height", "width"))
    ):
        raise ModelError(
            f"{label}: mode native needs a graph with dynamic height and width, but it takes {shape}; "
            "use --mode tile (windows of its size) or --mode resize"
        )
