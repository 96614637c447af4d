"""OpenVINO's own runtime (the `openvino` package) as a session, for `--device openvino-runtime`.

OpenVINO reads ONNX files itself, so the same files run without onnxruntime in between. On
the bundled U-Nets this is the fastest CPU engine measured on an AVX2 EPYC, and it runs
their int8 QDQ files accurately, where onnxruntime's OpenVINO EP does not (README,
"Against the runtimes a user could pick instead").

`RuntimeSession` offers the part of `onnxruntime.InferenceSession` the rest of the runtime
uses (get_inputs, get_outputs, get_providers, run), so Model, Segmenter and Generator run
it unchanged. OpenVINO is fastest on static shapes: each input shape seen is compiled once
(the model reshaped to it), except that a batch smaller than one already compiled for the
same image size (a job's short last batch) runs padded to it, until that smaller batch
comes back (single images after a batch of 8 would otherwise cost 8 images each, every
call; PAD_RUNS padded runs, then it is compiled too); past MAX_SHAPES distinct
shapes (native mode over photos of many sizes) one dynamic-shape compilation serves every
further shape. Each calling thread has its own infer request, so a batch job's lanes run
side by side on OpenVINO's streams.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ProviderError, SegenError
from .files import atomic_write
from .providers import OPENVINO_RUNTIME

MAX_SHAPES = 8  # static compilations per session before one dynamic-shape one serves the rest
PORTS = "ports.json"  # in the cache folder: the model's inputs and outputs
PAD_RUNS = 2  # padded runs of one smaller batch shape before it gets its own compilation


def openvino() -> Any:
    """The openvino module, or an error that says how to install it."""
    try:
        import openvino as ov
    except ImportError:
        raise ProviderError(
            "OpenVINO's runtime is not installed; pip install 'segen-edge[openvino]' (or pip install "
            "openvino beside the cpu extra)"
        ) from None
    return ov


def installed() -> bool:
    """Whether the openvino package is installed, without importing it (~0.2 s): enough to
    list it as an engine auto may choose; available() confirms it before it runs."""
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def available() -> bool:
    """Whether the openvino package imports and lists a CPU."""
    try:
        return "CPU" in openvino().Core().available_devices
    except Exception:  # not installed, or a broken install: the route is simply absent
        return False


@functools.cache
def version() -> str | None:
    """The installed openvino package's version, read from its metadata: importing
    openvino costs ~0.2 s, which a run on onnxruntime (whose cache keys name it) need not pay."""
    from importlib import metadata  # ~50 ms to import: only where a cache key is made

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Port:
    """An input or output as onnxruntime describes one: a name and a shape whose dynamic
    dimensions are strings."""

    name: str
    shape: list[int | str]
    type: str = "tensor(float)"


def config(threads: int | None, streams: int | None, bf16: bool, cache: Path | None = None) -> dict[str, Any]:
    """compile_model properties for one job. threads: per inference (None: every core);
    streams: inferences side by side (each calling thread its own), so the model gets
    threads x streams in all. Precision is always explicit: OpenVINO would otherwise
    compute in bfloat16 by default on CPUs that have it."""
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    if streams and streams > 1:
        props["NUM_STREAMS"] = streams
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads * streams
    else:
        props["PERFORMANCE_HINT"] = "LATENCY"
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
    if cache is not None:
        props["CACHE_DIR"] = str(cache)
    return props


class RuntimeSession:
    """An ONNX model compiled by OpenVINO for the CPU, run like an onnxruntime session."""

    def __init__(
        self,
        source: Path | bytes,
        threads: int | None = None,
        streams: int | None = None,
        bf16: bool = False,
        cache: Path | None = None,
    ) -> None:
        self._core = openvino().Core()
        self._source = source
        self._read: Any = None  # the ov.Model, read when a shape is first compiled (see _model)
        self.options = config(threads, streams, bf16, cache)
        self._cache = cache
        self._compiled: dict[tuple[int, ...] | None, Any] = {}
        self._padded: dict[tuple[int, ...], int] = {}  # smaller batch shape -> runs padded
        self._lock = threading.Lock()
        self._local = threading.local()
        self._inputs, self._outputs = self._ports()
        from .model import feed_type

        self._feed_type = feed_type(self._inputs[0].type) if self._inputs else np.dtype(np.float32)
        self._output_index = {p.name: i for i, p in enumerate(self._outputs)}
        if len(self._inputs) != 1:
            raise ValueError(f"the model has {len(self._inputs)} inputs; segen-edge models take one")

    # -- what onnxruntime's session offers --------------------------------------------

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_RUNTIME]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {OPENVINO_RUNTIME: {k: str(v) for k, v in self.options.items()}}

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (all, or those named) for one input array, as onnxruntime's run()."""
        (x,) = feeds.values()
        x = np.ascontiguousarray(x, dtype=self._feed_type)
        count = len(x)
        larger = self._larger_batch(tuple(x.shape))
        if larger is not None:  # a short last batch: padded, not compiled anew
            x = np.concatenate([x, np.zeros((larger - count, *x.shape[1:]), x.dtype)])
        request = self._request(tuple(x.shape))
        results = request.infer(x, share_inputs=True)  # the array itself: a dict costs ~20 us a call
        names = [p.name for p in self._outputs] if not output_names else list(output_names)
        values = results.to_tuple()  # indexing the result dict costs ~3 us an output
        out = [np.asarray(values[self._output_index[name]]) for name in names]
        return out if larger is None else [o[:count] for o in out]

    # -- the model, read once and only when needed ---------------------------------------

    @property
    def _model(self) -> Any:
        if self._read is None:
            source = self._source
            self._read = self._core.read_model(source if isinstance(source, bytes) else str(source))
        return self._read

    def _ports(self) -> tuple[list[Port], list[Port]]:
        """The inputs and outputs: from the cache, where an earlier session of this very file
        noted them (reading the model costs ~0.1 s, and with every shape's IR cached nothing
        else needs it), else from the model, noted for the next session."""
        note = None if self._cache is None else self._cache / PORTS
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if note is not None and note.is_file():
                saved = json.loads(note.read_text())
                return [Port(**p) for p in saved["inputs"]], [Port(**p) for p in saved["outputs"]]
        ports = [_port(p) for p in self._model.inputs], [_port(p) for p in self._model.outputs]
        if note is not None:
            text = json.dumps(
                {"inputs": [asdict(p) for p in ports[0]], "outputs": [asdict(p) for p in ports[1]]}
            )
            with contextlib.suppress(SegenError):
                atomic_write(note, lambda fh: fh.write(text.encode()))
        return ports

    # -- compilation, per shape ---------------------------------------------------------

    def _request(self, shape: tuple[int, ...]) -> Any:
        requests: dict[int, Any] = self._local.__dict__.setdefault("requests", {})
        compiled = self._compiled_for(shape)
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return request

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        found = self._compiled.get(shape)
        if found is None and self._static_count() >= MAX_SHAPES:
            found = self._compiled.get(None)
        if found is not None:
            return found
        with self._lock:
            key = shape if self._static_count() < MAX_SHAPES else None
            if key not in self._compiled:
                self._compiled[key] = self._compile(key)
            return self._compiled[key]

    def _compile(self, shape: tuple[int, ...] | None) -> Any:
        """The model compiled for `shape` (None: its own dynamic shapes). With a cache, each
        static shape's model is kept there as OpenVINO IR and compiled from that file: from a
        file OpenVINO finds its compiled blob without reading and reshaping the model again
        (unet-pets: ~0.1 s against ~0.4 s from the ONNX file, cache warm)."""
        ir = (
            None
            if shape is None or self._cache is None
            else self._cache / f"shape-{'x'.join(map(str, shape))}.xml"
        )
        if ir is not None and ir.is_file() and ir.with_suffix(".bin").is_file():
            with contextlib.suppress(Exception):  # damaged or half-removed: made again below
                return self._core.compile_model(str(ir), "CPU", self.options)
        model = self._model.clone()
        if shape is not None:
            model.reshape({0: list(shape)})
        if ir is not None and _save_ir(model, ir):
            with contextlib.suppress(Exception):
                return self._core.compile_model(str(ir), "CPU", self.options)
        return self._core.compile_model(model, "CPU", self.options)

    def _larger_batch(self, shape: tuple[int, ...]) -> int | None:
        """The smallest batch size compiled for this image size above `shape`'s, when
        `shape` itself is not compiled and has run padded fewer than PAD_RUNS times: a
        job's short last batch runs padded (compiling a shape costs as much as tens of
        runs), a batch size that keeps coming gets its own compilation."""
        if not shape or shape in self._compiled:
            return None
        sizes = [key[0] for key in list(self._compiled) if key and key[1:] == shape[1:] and key[0] > shape[0]]
        if not sizes:
            return None
        with self._lock:
            runs = self._padded.get(shape, 0)
            if runs >= PAD_RUNS:
                return None
            self._padded[shape] = runs + 1
        return min(sizes)

    def _static_count(self) -> int:
        return sum(1 for key in self._compiled if key is not None)


def _save_ir(model: Any, ir: Path) -> bool:
    """Write `model` as IR at `ir` (and its .bin) whole or not at all; False when it cannot."""
    tmp = ir.with_name(f".{ir.stem}.{os.getpid()}.{threading.get_ident()}.part.xml")
    try:
        openvino().save_model(model, str(tmp), compress_to_fp16=False)  # weights as they are
        os.replace(tmp.with_suffix(".bin"), ir.with_suffix(".bin"))
        os.replace(tmp, ir)  # the .xml last: a reader that finds it finds its weights
        return True
    except Exception:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return False


_TYPES = {
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
    "f64": "tensor(double)",
    "u8": "tensor(uint8)",
    "i8": "tensor(int8)",
}


def _port(port: Any) -> Port:
    shape: list[int | str] = []
    for i, dim in enumerate(port.get_partial_shape()):
        shape.append(dim.get_length() if dim.is_static else f"d{i}")
    kind = port.get_element_type().get_type_name()
    return Port(port.get_any_name(), shape, _TYPES.get(kind, "tensor(float)"))
