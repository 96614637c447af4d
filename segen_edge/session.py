"""Create an onnxruntime session for a device, then check which provider it really got.

onnxruntime silently falls back to the CPU when a provider fails to load, so asking is not
enough: after creating a session we read `session.get_providers()` and fail (explicit device)
or log which one it got (`auto`). onnxruntime is imported here, lazily, never at CLI start.

Providers:
- cpu: onnxruntime's own kernels, with the optimized graph cached on disk (see below).
- openvino: the OpenVINO execution provider built into `onnxruntime-openvino` (the
  `openvino` extra). Its factory checks only that OpenVINO lists the device, and OpenVINO's
  CPU plugin picks kernels by CPUID, so it runs on any x86 CPU, AMD included. Options are
  chosen per CPU and per job: threads, streams for batch jobs, bf16 compute (only where the
  CPU has AVX512-BF16 or AMX) and OpenVINO's compiled-model cache. The older plugin EP
  (`onnxruntime-ep-openvino`, Intel devices only) is a second route when the built-in one
  is absent.
- cuda: onnxruntime-gpu.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError, ModelError, ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
SHORT_NAMES = {CUDA: "cuda", CPU: "cpu", OPENVINO: "openvino"}
IN_MEMORY = "<in-memory model>"

log = logging.getLogger("segen_edge")


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    openvino = "openvino"


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


def cuda_available() -> bool:
    return CUDA in ort().get_available_providers()


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


# -- cache --------------------------------------------------------------------------------
#
# onnxruntime optimizes a graph (fusions, QDQ -> QLinear ops, NCHWc layouts) every time a
# session starts; for the int8 U-Net that is most of the 74 ms it takes to open. The CPU
# provider can save the optimized graph, which then opens in about 20 ms with optimization
# off. The saved graph can hold kernels for this CPU's instruction set, so the cache key is
# the model's bytes, the external data files it names, the onnxruntime version and the CPU's
# model name and flags. OpenVINO's compiled models are cached in a folder of the same key.

CACHE_ENV = "SEGEN_EDGE_CACHE"  # a folder, or "off"
_HASH_LIMIT = 64 << 20  # external data files up to this size are hashed, larger ones stat'ed


def cache_dir() -> Path | None:
    """Where optimized graphs are kept: $SEGEN_EDGE_CACHE, else $XDG_CACHE_HOME/segen-edge
    (~/.cache/segen-edge); None when $SEGEN_EDGE_CACHE is "off"."""
    given = os.environ.get(CACHE_ENV, "")
    if given.lower() in ("off", "0", "none"):
        return None
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segen-edge"


@functools.cache
def _cpu_identity() -> str:
    return f"{cpu_name()}\n{' '.join(sorted(cpu_flags()))}"


def external_data_files(model_bytes: bytes) -> list[str]:
    """The `location`s of the external data files a serialized ModelProto's initializers
    name (graph field 7, initializer field 5, TensorProto external_data 13)."""
    from .onnxmeta import _fields

    found: list[str] = []
    try:
        for number, wire, graph in _fields(memoryview(model_bytes)):
            if number != 7 or wire != 2:
                continue
            for g_number, g_wire, tensor in _fields(graph):  # type: ignore[arg-type]
                if g_number != 5 or g_wire != 2:
                    continue
                for t_number, t_wire, entry in _fields(tensor):  # type: ignore[arg-type]
                    if t_number != 13 or t_wire != 2:
                        continue
                    pair = {n: bytes(v) for n, w, v in _fields(entry) if w == 2}  # type: ignore
                    if pair.get(1) == b"location" and 2 in pair:
                        found.append(pair[2].decode("utf-8", "replace"))
    except ValueError:
        return []  # not a model: onnxruntime will say so
    return sorted(set(found))


def _external_identity(model: Path, model_bytes: bytes) -> str:
    """Name, size and mtime of each external data file (and the bytes of small ones)."""
    parts = []
    for location in external_data_files(model_bytes):
        target = model.parent / location
        try:
            stat = target.stat()
        except OSError:
            parts.append(f"{location}: missing")
            continue
        part = f"{location}: {stat.st_size} {stat.st_mtime_ns}"
        if stat.st_size <= _HASH_LIMIT:
            with contextlib.suppress(OSError):
                part += " " + hashlib.sha256(target.read_bytes()).hexdigest()
        parts.append(part)
    return "\n".join(parts)


def cache_key(model: Path) -> str | None:
    """The digest that names `model`'s cache entries here, or None when it cannot be read."""
    try:
        data = model.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data)
    digest.update(_external_identity(model, data).encode())
    digest.update(f"{ort().__version__}\n{_cpu_identity()}".encode())
    return digest.hexdigest()[:20]


def optimized_path(model: Path) -> Path | None:
    """The cache file for `model`'s optimized graph on this CPU and onnxruntime, or None."""
    folder = cache_dir()
    key = cache_key(model) if folder is not None else None
    if folder is None or key is None:
        return None
    return folder / f"{model.stem}-{key}.ort.onnx"


def openvino_cache(model: Path | None) -> Path | None:
    """The folder for OpenVINO's compiled blobs of `model`, or None (no cache, or bytes)."""
    folder = cache_dir()
    key = cache_key(model) if folder is not None and model is not None else None
    if folder is None or key is None or model is None:
        return None
    target = folder / f"{model.stem}-{key}.openvino"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return target if target.is_dir() and os.access(target, os.W_OK) else None


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary name beside `target` that never outlives the block."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


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


def _openvino_session(
    source: Path | bytes, threads: int | None, streams: int | None, bf16: bool
) -> tuple[Any, dict[str, str]]:
    rt = ort()
    model = source if isinstance(source, bytes) else str(source)
    if openvino_builtin():
        if "CPU" not in _builtin_devices():
            raise RuntimeError(f"OpenVINO lists no CPU (it lists {', '.join(_builtin_devices())})")
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
        if device not in (Device.auto, Device.openvino):
            raise BadInputError(
                f"--precision bf16 runs on OpenVINO only, not --device {device.value}; "
                "use --device openvino (or auto), or another precision"
            )
        check_bf16()
    rt = ort()
    errors: dict[str, str] = {}

    order = {
        Device.auto: ["openvino"] if bf16 else ["cuda", "openvino", "cpu"],
        Device.cuda: ["cuda"],
        Device.openvino: ["openvino"],
        Device.cpu: ["cpu"],
    }[device]
    for provider in order:
        optimized, options = None, {}
        if provider == "cuda":
            if not cuda_available():
                errors["cuda"] = "onnxruntime-gpu is not installed"
                continue
            model = source if isinstance(source, bytes) else str(source)
            session = _try(
                provider,
                lambda m=model: rt.InferenceSession(  # type: ignore[misc]
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
    if "cpu" in errors:
        text = errors["cpu"]
        if "protobuf" in text.lower() or "invalid" in text.lower() or "load model" in text.lower():
            return ModelError(f"{path}: not a valid ONNX model ({text})")
        return ModelError(f"{path}: onnxruntime cannot run this model ({text})")
    fixes = {
        Device.cuda: "install the GPU build: pip uninstall onnxruntime && "
        "pip install 'segen-edge[gpu]', and check the CUDA driver with nvidia-smi",
        Device.openvino: "install the OpenVINO build: pip uninstall onnxruntime && "
        "pip install 'segen-edge[openvino]' (it runs on any x86 CPU)",
    }
    fix = fixes.get(device, "check the onnxruntime install")
    if device is Device.auto and "openvino" in errors and len(errors) == 1:
        fix = fixes[Device.openvino]  # bf16 asked under auto
    return ProviderError(f"--device {device.value} did not load ({why}); {fix}, or use --device cpu")
