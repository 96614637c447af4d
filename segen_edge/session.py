"""Create an onnxruntime session for a device, then check which provider it really got.

onnxruntime silently falls back to the CPU when a provider fails to load, so asking is not
enough: after creating a session we read `session.get_providers()` and fail (explicit device)
or log which one it got (`auto`). onnxruntime is imported here, lazily, never at CLI start.

Providers:
- cpu: onnxruntime's own kernels, with the optimized graph cached on disk (cache.py).
- openvino: the OpenVINO execution provider built into `onnxruntime-openvino` (the
  `openvino` extra). Its factory checks only that OpenVINO lists the device, and OpenVINO's
  CPU plugin picks kernels by CPUID, so it runs on any x86 CPU, AMD included. Options are
  chosen per CPU and per job: threads, streams for batch jobs, bf16 compute (only where the
  CPU has AVX512-BF16 or AMX) and OpenVINO's compiled-model cache. The older plugin EP
  (`onnxruntime-ep-openvino`, Intel devices only) is a second route when the built-in one
  is absent.
- openvino-runtime: OpenVINO's own runtime (the `openvino` package; openvino_runtime.py)
  reading the same ONNX files, with the same per-job options; no onnxruntime involved.
- cuda: onnxruntime-gpu.

Here: Device, LoadedSession and create_session; onnxruntime itself, the CPU's flags and
each provider's options are in providers.py, the optimized-graph cache in cache.py.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import _temporary, external_data_files, openvino_cache, optimized_path
from .errors import BadInputError, ModelError, ProviderError
from .providers import (
    CPU,
    CUDA,
    OPENVINO,
    SHORT_NAMES,
    _builtin_devices,
    _plugin_devices,
    check_bf16,
    cuda_available,
    has_onnxruntime,
    openvino_builtin,
    openvino_devices,
    openvino_options,
    ort,
    session_options,
)

IN_MEMORY = "<in-memory model>"

log = logging.getLogger("segen_edge")


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    openvino = "openvino"
    openvino_runtime = "openvino-runtime"


@dataclass
class LoadedSession:
    """An onnxruntime session and the provider it actually runs on."""

    session: Any  # onnxruntime.InferenceSession
    provider: str  # short name: cpu | cuda | openvino
    path: Path  # the model file (Path(IN_MEMORY) or the given name for bytes)
    optimized: Path | None = None  # the cached optimized graph the session opened, if any
    bf16: bool = False  # OpenVINO computes in bfloat16 (INFERENCE_PRECISION_HINT)
    provider_options: dict[str, str] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return str(self.session.get_inputs()[0].name)

    @property
    def output_name(self) -> str:
        return str(self.session.get_outputs()[0].name)


def _cpu_session(source: Path | bytes, threads: int | None) -> tuple[Any, Path | None]:
    """A CPU-provider session, from the cached optimized graph when there is one (and
    saving it when there is not), and that graph's path when it was used. The cache is
    best effort: any trouble with it falls back to the original file."""
    rt = ort()

    def plain() -> Any:
        model = source if isinstance(source, bytes) else str(source)
        return rt.InferenceSession(model, sess_options=session_options(threads), providers=[CPU])

    cached = None if isinstance(source, bytes) else optimized_path(source)
    if cached is None or (cached.exists() and not cached.is_file()):
        return plain(), None  # no cache, or something that is not ours sits at its name
    data = cached.with_name(cached.name + ".data")  # the saved graph's weights, if external
    external = bool(external_data_files(source.read_bytes())) if isinstance(source, Path) else False
    if cached.is_file():
        options = session_options(threads)
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return rt.InferenceSession(str(cached), sess_options=options, providers=[CPU]), cached
        except Exception:  # a damaged or stale entry: drop it and rebuild
            for stale in (cached, data):
                with contextlib.suppress(OSError):
                    stale.unlink()
    with _temporary(cached) as tmp:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            options = session_options(threads, tmp, data.name if external else None)
            session = rt.InferenceSession(str(source), sess_options=options, providers=[CPU])
        except Exception:  # an unwritable cache, or a bad model: the plain load says which
            return plain(), None
        with contextlib.suppress(OSError):
            if tmp.is_file():
                os.replace(tmp, cached)
    return session, None


def _lane_streams(threads: int) -> int:
    """OpenVINO inference streams for sessions of `threads` per run: one per lane, as many
    as pipeline.lanes_for runs side by side."""
    from .pipeline import cpu_count

    return max(1, cpu_count() // threads)


def _openvino_session(
    source: Path | bytes, threads: int | None, streams: int | None, bf16: bool
) -> tuple[Any, dict[str, str]]:
    rt = ort()
    model = source if isinstance(source, bytes) else str(source)
    if openvino_builtin():
        if "CPU" not in _builtin_devices():
            raise RuntimeError(f"OpenVINO lists no CPU (it lists {', '.join(_builtin_devices())})")
        if streams is None and threads is not None:
            # the EP's thread count is the compiled model's, shared by its streams: each of
            # the batch job's runs in flight gets a stream and its threads, instead of all
            # of them queueing on one stream
            streams = _lane_streams(threads)
            threads *= streams
        cache = None if isinstance(source, bytes) else openvino_cache(source)
        options = openvino_options(threads, streams, bf16, cache)
        session = rt.InferenceSession(
            model, sess_options=session_options(threads), providers=[(OPENVINO, options), CPU]
        )
        return session, options
    devices = _plugin_devices()
    if not devices:
        raise RuntimeError("the OpenVINO execution provider is not installed")
    if bf16:
        raise RuntimeError("bf16 needs the built-in OpenVINO EP (onnxruntime-openvino)")
    sess_options = session_options(threads)
    sess_options.add_provider_for_devices(list(devices), {})
    return rt.InferenceSession(model, sess_options=sess_options), {}


def _openvino_runtime_session(
    source: Path | bytes, threads: int | None, streams: int | None, bf16: bool
) -> tuple[Any, dict[str, str]]:
    from .openvino_runtime import RuntimeSession

    if streams is None and threads is not None:
        streams = _lane_streams(threads)
    cache = None if isinstance(source, bytes) else openvino_cache(source)
    session = RuntimeSession(source, threads, streams, bf16, cache)
    return session, {k: str(v) for k, v in session.options.items()}


def _try(device: str, build: Callable[[], Any], errors: dict[str, str]) -> Any:
    try:
        return build()
    except Exception as exc:  # onnxruntime raises its own exception types
        errors[device] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return None


def create_session(
    path: str | Path | bytes,
    device: Device | str = Device.auto,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    *,
    streams: int | None = None,
    bf16: bool = False,
    name: str | None = None,
) -> LoadedSession:
    """Open `path` (an ONNX file, or a serialized model as bytes) on `device`, verifying
    the provider onnxruntime actually assigned.

    `threads`: intra-op threads of one run; `streams`: OpenVINO inference streams (batch
    jobs that keep several runs in flight); `bf16`: OpenVINO computes in bfloat16 (refused
    on a CPU without AVX512-BF16 or AMX, and on any provider but OpenVINO). `name` labels
    an in-memory model in messages. `warn` (deprecated) also receives the `auto` notice.
    """
    device = Device(device)
    source: Path | bytes
    if isinstance(path, bytes | bytearray):
        source, label = bytes(path), Path(name or IN_MEMORY)
    else:
        source = label = Path(path)
        if not source.is_file():
            raise ModelError(f"{source}: model file not found; pass an ONNX file or a bundled model name")
    if bf16:
        if device not in (Device.auto, Device.openvino, Device.openvino_runtime):
            raise BadInputError(
                f"--precision bf16 runs on OpenVINO only, not --device {device.value}; "
                "use --device openvino or openvino-runtime (or auto), or another precision"
            )
        check_bf16()
    errors: dict[str, str] = {}

    order = {
        Device.auto: ["openvino", "openvino-runtime"]
        if bf16
        else ["cuda", "openvino", "cpu", "openvino-runtime"],
        Device.cuda: ["cuda"],
        Device.openvino: ["openvino"],
        Device.openvino_runtime: ["openvino-runtime"],
        Device.cpu: ["cpu"],
    }[device]
    for provider in order:
        optimized, options = None, {}
        if provider == "openvino-runtime":
            from .openvino_runtime import available

            if not available():
                errors[provider] = "OpenVINO's runtime (the openvino package) is not installed"
                continue
            built = _try(provider, lambda: _openvino_runtime_session(source, threads, streams, bf16), errors)
            session, options = built or (None, {})
        elif not has_onnxruntime():
            errors[provider] = "onnxruntime is not installed"
            continue
        elif provider == "cuda":
            if not cuda_available():
                errors["cuda"] = "onnxruntime-gpu is not installed"
                continue
            model = source if isinstance(source, bytes) else str(source)
            session = _try(
                provider,
                lambda m=model: ort().InferenceSession(  # type: ignore[misc]
                    m, sess_options=session_options(threads), providers=[CUDA, CPU]
                ),
                errors,
            )
        elif provider == "openvino":
            if not openvino_devices():
                errors["openvino"] = "the OpenVINO execution provider is not installed"
                continue
            built = _try(provider, lambda: _openvino_session(source, threads, streams, bf16), errors)
            session, options = built or (None, {})
        else:
            built = _try(provider, lambda: _cpu_session(source, threads), errors)
            session, optimized = built or (None, None)
        if session is None:
            continue
        got = SHORT_NAMES.get(session.get_providers()[0], session.get_providers()[0])
        if got != provider:
            errors[provider] = f"the session fell back to {got}"
            continue
        if device is Device.auto:
            message = f"running {label.name} on {got}" + (" (bf16)" if bf16 else "")
            log.info(message)
            if warn is not None:
                warn(f"segen-edge: {message}")
        return LoadedSession(session, got, label, optimized, bf16, options)
    raise _no_provider(device, label, errors)


def _no_provider(device: Device, path: Path, errors: dict[str, str]) -> Exception:
    why = "; ".join(f"{k}: {v}" for k, v in errors.items())
    ran = [k for k, v in errors.items() if "not installed" not in v]
    if ran == ["openvino-runtime"] and device is not Device.openvino:
        text = errors["openvino-runtime"]
        return ModelError(f"{path}: OpenVINO cannot run this model ({text})")
    if "cpu" in errors and "not installed" not in errors["cpu"]:
        text = errors["cpu"]
        if "protobuf" in text.lower() or "invalid" in text.lower() or "load model" in text.lower():
            return ModelError(f"{path}: not a valid ONNX model ({text})")
        return ModelError(f"{path}: onnxruntime cannot run this model ({text})")
    fixes = {
        Device.cuda: "install the GPU build: pip uninstall onnxruntime && "
        "pip install 'segen-edge[gpu]', and check the CUDA driver with nvidia-smi",
        Device.openvino: "install the OpenVINO build: pip uninstall onnxruntime && "
        "pip install 'segen-edge[openvino]' (it runs on any x86 CPU)",
        Device.openvino_runtime: "install OpenVINO's runtime: pip install openvino "
        "(beside any onnxruntime build), or pip install 'segen-edge[openvino]'",
    }
    if device in (Device.auto, Device.cpu) and all("not installed" in v for v in errors.values()):
        return ProviderError(
            "no inference engine is installed; pip install 'segen-edge[cpu]' (or [gpu] for CUDA, "
            "[openvino] for OpenVINO on x86)"
        )
    fix = fixes.get(device, "check the onnxruntime install")
    if device is Device.auto and "openvino" in errors and len(errors) == 1:
        fix = fixes[Device.openvino]  # bf16 asked under auto
    return ProviderError(f"--device {device.value} did not load ({why}); {fix}, or use --device cpu")
