"""onnxruntime and its execution providers: the lazy import (ort), the CPU's name and
feature flags (bf16 and VNNI checks), which providers are installed, and the session and
OpenVINO options one job asks for."""

from __future__ import annotations

import contextlib
import functools
import json
import platform
from pathlib import Path
from typing import Any

from .errors import BadInputError, ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
OPENVINO_RUNTIME = "OpenVINORuntime"  # OpenVINO's own runtime, no onnxruntime (openvino_runtime.py)
SHORT_NAMES = {CUDA: "cuda", CPU: "cpu", OPENVINO: "openvino", OPENVINO_RUNTIME: "openvino-runtime"}
CPU_ENGINES = ("cpu", "openvino", "openvino-runtime")  # what `tune` times and auto picks among


def ort() -> Any:
    """The onnxruntime module (its own logger set to errors only), or an error that says
    which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(
            "onnxruntime is not installed; install one runtime extra: "
            "pip install 'segen-edge[cpu]' (or [gpu] for CUDA, [openvino] for OpenVINO on x86)"
        ) from None
    _quiet_logger(onnxruntime)
    return onnxruntime


@functools.cache
def _quiet_logger(rt: Any) -> None:
    """onnxruntime's default logger prints warnings to stderr (stdout for some builds); the
    library says what matters itself."""
    with contextlib.suppress(Exception):
        rt.set_default_logger_severity(3)


# -- the CPU ------------------------------------------------------------------------------


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX):
    without them onnxruntime's u8s8 kernels can saturate, so int8 weights need 7 bits."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def check_bf16(flags: frozenset[str] | None = None) -> None:
    """Refuse bf16 on a CPU that would only emulate it."""
    if not has_bf16(flags):
        raise BadInputError(
            f"--precision bf16: this CPU ({cpu_name()}) has neither AVX512-BF16 nor AMX, so "
            "OpenVINO would not compute in bfloat16 here; use --precision fp32, int8 or auto"
        )


# -- providers ----------------------------------------------------------------------------


def has_onnxruntime() -> bool:
    """Whether some onnxruntime build imports here (OpenVINO's runtime can run without one)."""
    try:
        ort()
    except ProviderError:
        return False
    return True


def cuda_available() -> bool:
    return has_onnxruntime() and CUDA in ort().get_available_providers()


def cpu_providers(confirmed: bool = True) -> list[str]:
    """The CPU engines installed here, by short name: cpu (onnxruntime's own kernels, when
    onnxruntime is installed), openvino (its OpenVINO EP) and openvino-runtime (the
    openvino package; with confirmed=False only found installed, not imported, which costs
    ~0.2 s that a run choosing another engine need not pay)."""
    from . import openvino_runtime

    found = []
    if has_onnxruntime():
        found.append("cpu")
        if OPENVINO in ort().get_available_providers() or _plugin_devices():
            found.append("openvino")
    if openvino_runtime.available() if confirmed else openvino_runtime.installed():
        found.append("openvino-runtime")
    return found


@functools.cache
def runtime_versions() -> str:
    """The versions of the inference engines installed here (part of the cache keys)."""
    from . import openvino_runtime

    parts = [f"onnxruntime {ort().__version__}"] if has_onnxruntime() else []
    if openvino_runtime.version():
        parts.append(f"openvino {openvino_runtime.version()}")
    return "; ".join(parts)


def openvino_builtin() -> bool:
    """Whether this onnxruntime has the OpenVINO EP built in (onnxruntime-openvino)."""
    return OPENVINO in ort().get_available_providers()


@functools.cache
def _plugin_devices() -> tuple[Any, ...]:
    """Register the OpenVINO plugin EP once; its devices, or () when absent or unusable."""
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return ()
    rt = ort()
    name = plugin.get_ep_name()
    try:
        rt.register_execution_provider_library(name, plugin.get_library_path())
    except Exception as exc:  # registering twice, or a library that fails to load
        if "already registered" not in str(exc):
            return ()
    devices = [d for d in rt.get_ep_devices() if d.ep_name == name]
    cpus = [d for d in devices if "CPU" in str(d.device.type)]
    return tuple(cpus or devices)


def openvino_devices() -> tuple[Any, ...]:
    """What the OpenVINO route can run on: ("CPU",) with the built-in EP, else the plugin
    EP's devices; () when neither is installed."""
    if openvino_builtin():
        return _builtin_devices()
    return _plugin_devices()


@functools.cache
def _builtin_devices() -> tuple[str, ...]:
    try:
        from onnxruntime.capi import _pybind_state

        return tuple(str(d) for d in _pybind_state.get_available_openvino_device_ids())
    except Exception:  # an older build without the query: OpenVINO always has its CPU plugin
        return ("CPU",)


def session_options(
    threads: int | None = None, optimized_path: Path | None = None, data_name: str | None = None
) -> Any:
    """Session options; `optimized_path` saves the optimized graph there, its initializers
    in the file `data_name` beside it when given (for models with external data, whose
    saved graph would otherwise point at data files relative to the cache folder)."""
    rt = ort()
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; we report the provider ourselves
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        if data_name:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", data_name
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "0"
            )
    return options


def openvino_options(
    threads: int | None = None,
    streams: int | None = None,
    bf16: bool = False,
    cache: Path | None = None,
) -> dict[str, str]:
    """OpenVINO EP options for one job: `threads` for one inference, `streams` parallel
    inference streams (batch jobs with several runs in flight), bf16 compute, and a folder
    for OpenVINO's compiled-model cache."""
    options = {"device_type": "CPU"}
    if threads:
        options["num_of_threads"] = str(threads)
    if streams:
        options["num_streams"] = str(streams)
    if bf16:
        options["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})
    if cache is not None:
        options["cache_dir"] = str(cache)
    return options
