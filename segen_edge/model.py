"""Open a model for a task: find the file, create a verified session, read its metadata.

The runtime chooses its path by task (segment / generate), never by architecture: FCN and
U-Net both load as a Segmenter, so a new architecture needs no runtime code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch through the session (onnxruntime releases the GIL here)."""
        loaded = self.loaded
        return np.asarray(loaded.session.run([loaded.output_name], {loaded.input_name: batch})[0])


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
    """The graph's input rank must fit the task the metadata claims."""
    shape = loaded.session.get_inputs()[0].shape
    want = 2 if info.task == "generate" else 4
    if len(shape) != want:
        raise ModelError(
            f"{loaded.path}: input has shape {shape} but a {info.task} model takes "
            f"{'(batch, latent)' if want == 2 else '(batch, height, width, channels)'}"
        )


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
