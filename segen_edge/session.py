"""Create an onnxruntime session for a device, then check which provider it really got.

onnxruntime silently falls back to the CPU when a provider fails to load, so asking is not
enough: after creating a session we read `session.get_providers()` and fail (explicit device)
or say so on stderr (`auto`). onnxruntime is imported here, lazily, never at CLI start.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import os
import platform
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
SHORT_NAMES = {CUDA: "cuda", CPU: "cpu", OPENVINO: "openvino"}


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
    path: Path
    optimized: Path | None = None  # the cached optimized graph the session opened, if any

    @property
    def input_name(self) -> str:
        return str(self.session.get_inputs()[0].name)

    @property
    def output_name(self) -> str:
        return str(self.session.get_outputs()[0].name)


def ort() -> Any:
    """The onnxruntime module, or an error that says which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(
            "onnxruntime is not installed; install one runtime extra: "
            "pip install 'segen-edge[cpu]' (or [gpu] for CUDA, [openvino] for Intel CPUs)"
        ) from None
    return onnxruntime


@functools.cache
def openvino_devices() -> tuple[Any, ...]:
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


def cuda_available() -> bool:
    return CUDA in ort().get_available_providers()


def session_options(threads: int | None = None, optimized_path: Path | None = None) -> Any:
    rt = ort()
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; we report the provider ourselves
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


# -- optimized-model cache -----------------------------------------------------------------
#
# onnxruntime optimizes a graph (fusions, QDQ -> QLinear ops, NCHWc layouts) every time a
# session starts; for the int8 U-Net that is most of the 74 ms it takes to open. The CPU
# provider can save the optimized graph, which then opens in about 20 ms with optimization
# off. The saved graph can hold kernels for this CPU's instruction set, so the cache key is
# the model's bytes, the onnxruntime version and the CPU's model name and flags.

CACHE_ENV = "SEGEN_EDGE_CACHE"  # a folder, or "off"


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
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def optimized_path(model: Path) -> Path | None:
    """The cache file for `model`'s optimized graph on this CPU and onnxruntime, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        digest = hashlib.sha256(model.read_bytes())
    except OSError:
        return None
    digest.update(f"{ort().__version__}\n{_cpu_identity()}".encode())
    return folder / f"{model.stem}-{digest.hexdigest()[:20]}.ort.onnx"


def _cpu_session(path: Path, threads: int | None) -> tuple[Any, Path | None]:
    """A CPU-provider session, from the cached optimized graph when there is one (and
    saving it when there is not), and that graph's path when it was used. The cache is
    best effort: any trouble with it falls back to the original file."""
    rt = ort()
    cached = optimized_path(path)
    if cached is not None and cached.is_file():
        options = session_options(threads)
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return rt.InferenceSession(str(cached), sess_options=options, providers=[CPU]), cached
        except Exception:  # a damaged or stale entry: drop it and rebuild
            with contextlib.suppress(OSError):
                cached.unlink()
    plain = functools.partial(
        rt.InferenceSession, str(path), sess_options=session_options(threads), providers=[CPU]
    )
    if cached is None:
        return plain(), None
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        session = rt.InferenceSession(
            str(path), sess_options=session_options(threads, optimized_path=tmp), providers=[CPU]
        )
    except Exception:  # an unwritable cache, or a bad model: the plain load says which
        with contextlib.suppress(OSError):
            tmp.unlink()
        return plain(), None
    with contextlib.suppress(OSError):
        os.replace(tmp, cached)
    return session, None


def _try(device: str, build: Callable[[], Any], errors: dict[str, str]) -> Any:
    try:
        return build()
    except Exception as exc:  # onnxruntime raises its own exception types
        errors[device] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return None


def create_session(
    path: str | Path,
    device: Device | str = Device.auto,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> LoadedSession:
    """Open `path` on `device`, verifying the provider onnxruntime actually assigned."""
    path = Path(path)
    device = Device(device)
    say = warn or (lambda msg: print(msg, file=sys.stderr))
    if not path.is_file():
        raise ModelError(f"{path}: model file not found; pass an ONNX file or a bundled model name")
    rt = ort()
    errors: dict[str, str] = {}

    def plain(providers: list[str]) -> Callable[[], Any]:
        return lambda: rt.InferenceSession(
            str(path), sess_options=session_options(threads), providers=providers
        )

    def openvino() -> Any:
        devices = openvino_devices()
        if not devices:
            raise RuntimeError("no OpenVINO device (the plugin supports Intel CPUs, GPUs and NPUs)")
        options = session_options(threads)
        options.add_provider_for_devices(list(devices), {})
        return rt.InferenceSession(str(path), sess_options=options)

    order = {
        Device.auto: ["cuda", "openvino", "cpu"],
        Device.cuda: ["cuda"],
        Device.openvino: ["openvino"],
        Device.cpu: ["cpu"],
    }[device]
    for name in order:
        optimized = None
        if name == "cuda":
            if not cuda_available():
                errors["cuda"] = "onnxruntime-gpu is not installed"
                continue
            session = _try(name, plain([CUDA, CPU]), errors)
        elif name == "openvino":
            session = _try(name, openvino, errors)
        else:
            session, optimized = _try(name, lambda: _cpu_session(path, threads), errors) or (None, None)
        if session is None:
            continue
        got = SHORT_NAMES.get(session.get_providers()[0], session.get_providers()[0])
        if got != name:
            errors[name] = f"the session fell back to {got}"
            continue
        if device is Device.auto:
            say(f"segen-edge: running {path.name} on {got}")
        return LoadedSession(session, got, path, optimized)
    raise _no_provider(device, path, errors)


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
        Device.openvino: "install the plugin: pip install 'segen-edge[openvino]' "
        "(OpenVINO runs on Intel CPUs and GPUs)",
    }
    fix = fixes.get(device, "check the onnxruntime install")
    return ProviderError(f"--device {device.value} did not load ({why}); {fix}, or use --device cpu")
