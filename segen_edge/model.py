"""Open a model for a task: find the file, create a verified session, read its metadata.

The runtime chooses its path by task (segment / generate), never by architecture: FCN and
U-Net both load as a Segmenter, so a new architecture needs no runtime code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import zoo
from .errors import MetadataError, ModelError
from .metadata import PREFIX, ModelInfo
from .session import Device, LoadedSession, create_session, cuda_available, openvino_devices


@dataclass
class Model:
    """A session plus the metadata that says how to feed it. Base of Segmenter and Generator."""

    loaded: LoadedSession
    info: ModelInfo

    @property
    def provider(self) -> str:
        return self.loaded.provider

    @functools.cached_property
    def fixed_batch(self) -> int | None:
        """The graph's static batch size, or None when the batch axis is dynamic."""
        dim = self.loaded.session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch in the model's own layout (onnxruntime releases the GIL here).

        A graph exported with a fixed batch size (often 1) is fed slices of that size.
        """
        fixed = self.fixed_batch
        if fixed is None or fixed == len(batch):
            return self._run(batch)
        parts = []
        for start in range(0, len(batch), fixed):
            part = batch[start : start + fixed]
            short = fixed - len(part)
            if short:
                part = np.concatenate([part, np.zeros((short, *part.shape[1:]), part.dtype)])
            parts.append(self._run(part)[: fixed - short])
        return np.concatenate(parts)

    def run_many(self, batches: Iterable[np.ndarray], lanes: int = 1) -> Iterator[np.ndarray]:
        """run() each batch, `lanes` at once (see pipeline.lanes_for), yielding in order."""
        from .pipeline import ordered_map

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-run") as runners:
            yield from ordered_map(self.run, batches, runners, lanes + 1)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        loaded = self.loaded
        try:
            out = loaded.session.run([loaded.output_name], {loaded.input_name: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types; never a traceback
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{loaded.path}: onnxruntime could not run the model on an input of shape "
                f"{list(batch.shape)} ({reason}); check the model's segen metadata "
                "(segen-edge info) against its input"
            ) from None
        return np.asarray(out)


def probe_provider(device: Device) -> str:
    """The provider `device` will most likely get, to pick a precision before loading."""
    if device is Device.auto:
        if cuda_available():
            return "cuda"
        return "openvino" if openvino_devices() else "cpu"
    return device.value


def read_info(loaded: LoadedSession, overrides: Mapping[str, Any] | None = None) -> ModelInfo:
    """The model's segen metadata, with user-given values filling in (or replacing) keys."""
    props = dict(loaded.session.get_modelmeta().custom_metadata_map)
    data: dict[str, Any] = {}
    if any(k.startswith(PREFIX) for k in props):
        data = ModelInfo.from_props(props, source=str(loaded.path)).to_dict()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not data:
        raise MetadataError(
            f"{loaded.path}: no segen.* metadata; export it with 'segen-edge export', or give "
            "--image-size HEIGHT WIDTH, --pixel-scale/--pixel-offset and --class-names "
            "(segment) or --latent-size (generate)"
        )
    info = ModelInfo.from_dict(data, source=str(loaded.path))
    _check_io(loaded, info)
    return info


def _check_io(loaded: LoadedSession, info: ModelInfo) -> None:
    """The graph's input must fit what the metadata says to feed it (rank and static dims)."""
    shape = list(loaded.session.get_inputs()[0].shape)
    if info.task == "generate":
        want = {"latent": info.latent_size}
        axes: tuple[str, ...] = ("latent",)
        fix = "fix segen.latent_size, or pass --latent-size for a bare ONNX file"
    else:
        want = {"height": info.height, "width": info.width, "channels": info.channels}
        nchw = info.layout == "NCHW"
        axes = ("channels", "height", "width") if nchw else ("height", "width", "channels")
        fix = "fix segen.image_size/segen.channels, or pass --image-size for a bare ONNX file"
    if len(shape) != len(axes) + 1:
        expected = "(batch, " + ", ".join(axes) + ")"
        raise ModelError(f"{loaded.path}: input has shape {shape} but a {info.task} model takes {expected}")
    got = dict(zip(axes, shape[1:], strict=True))
    wrong = [k for k, v in got.items() if isinstance(v, int) and v > 0 and v != want[k]]
    if wrong:
        says = ", ".join(f"{k} {want[k]}" for k in wrong)
        raise ModelError(f"{loaded.path}: the graph takes input {shape} but its metadata says {says}; {fix}")


def open_model(
    spec: str | None,
    task: str | None,
    device: Device | str = Device.auto,
    precision: str = "auto",
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Model:
    """Load `spec` (a bundled name or an ONNX path) for `task` on `device`.

    With `task` None, any task is accepted (bench); otherwise a model of another task is
    an error that names the right verb.
    """
    say = warn or (lambda msg: print(msg, file=sys.stderr))
    device = Device(device)
    ref = zoo.resolve(spec, task or "segment")
    _, path = ref.pick(precision, probe_provider(device))
    loaded = create_session(path, device, threads=threads, warn=say)
    info = read_info(loaded, overrides)
    if task is not None and info.task != task:
        verb = "generate" if info.task == "generate" else "segment"
        raise ModelError(
            f"{path}: is a {info.task} model ({info.arch}), not a {task} model; "
            f"use 'segen-edge {verb}' with it, or pick a {task} model (segen-edge models)"
        )
    if precision not in ("auto", info.precision):
        raise ModelError(
            f"{path}: asked for --precision {precision} but the file holds a {info.precision} model"
        )
    if info.precision == "int8" and loaded.provider == "cuda":
        say(
            f"segen-edge: warning: {path.name} is int8 and onnxruntime's CUDA provider has few "
            "int8 kernels; use --precision fp16 or fp32 on a GPU"
        )
    if info.task == "segment":
        from .segment import Segmenter

        return Segmenter(loaded, info)
    from .generate import Generator

    return Generator(loaded, info)
