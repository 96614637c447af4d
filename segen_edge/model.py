"""Model: an onnxruntime session plus the metadata that says how to feed it.

The base of Segmenter and Generator. It knows nothing of either (the typed factories in
loading.py build them), so there is no import cycle. A Model is safe to share between
threads (onnxruntime's `run` is), and a context manager that releases the session.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .metadata import ModelInfo
from .session import LoadedSession


class Model:
    """A session and its ModelInfo. Use `segen_edge.load()` to make one."""

    def __init__(self, loaded: LoadedSession, info: ModelInfo) -> None:
        self.loaded = loaded
        self.info = info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.info.precision}, on {self.provider})"

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the onnxruntime session; the model cannot run afterwards."""
        self.loaded.session = None

    @property
    def name(self) -> str:
        return self.info.name or Path(self.loaded.path).stem

    @property
    def provider(self) -> str:
        """The execution provider the session really runs on: cpu, cuda or openvino."""
        return self.loaded.provider

    @property
    def path(self) -> Path:
        return Path(self.loaded.path)

    @functools.cached_property
    def fixed_batch(self) -> int | None:
        """The graph's static batch size, or None when the batch axis is dynamic."""
        dim = self._session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    @property
    def _session(self) -> Any:
        if self.loaded.session is None:
            raise ModelError(f"{self.name}: the model was closed; load it again")
        return self.loaded.session

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

    @functools.cached_property
    def _names(self) -> tuple[list[str], str]:
        """(output names, input name), asked of the session once, not on every run."""
        return [self.loaded.output_name], self.loaded.input_name

    @functools.cached_property
    def _feed_type(self) -> np.dtype[Any]:
        """The numpy type the graph's input takes: float32 unless it says otherwise (a
        graph with its preprocessing inside takes uint8 pixels; an fp16 one float16)."""
        return feed_type(self._session.get_inputs()[0].type)

    @functools.cached_property
    def _latent_image(self) -> bool:
        """Whether the graph takes its latents as a (N, nz, 1, 1) image, as PyTorch's DCGAN."""
        return len(self._session.get_inputs()[0].shape) == 4 and self.info.task == "generate"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        loaded = self.loaded
        session = self._session
        outputs, feed = self._names
        if batch.dtype != self._feed_type:
            batch = as_feed(batch, self._feed_type)
        if batch.ndim == 2 and self._latent_image:
            batch = batch.reshape(*batch.shape, 1, 1)  # latents as (N, nz, 1, 1)
        try:
            out = session.run(outputs, {feed: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types; never a traceback
            text = str(exc).strip()
            reason = text.splitlines()[-1][:200] if text else type(exc).__name__
            raise ModelError(
                f"{loaded.path}: onnxruntime could not run the model on an input of shape "
                f"{list(batch.shape)} ({reason}); check the model's description "
                "(segen-edge info) against its input"
            ) from None
        out = np.asarray(out)
        if out.ndim == 0 or out.shape[0] != len(batch):
            raise ModelError(
                f"{loaded.path}: the model returned shape {list(out.shape)} for a batch of "
                f"{len(batch)}; expected the batch on the first axis"
            )
        return out


FEED_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def feed_type(onnx_type: str) -> np.dtype[Any]:
    """numpy's type for an input of onnxruntime's `onnx_type` ("tensor(uint8)"), float32 for
    any other."""
    return np.dtype(FEED_TYPES.get(onnx_type, np.float32))


def as_feed(batch: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """`batch` in `dtype`: integers rounded and clipped to the type's range, floats cast."""
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return np.clip(np.rint(batch), limits.min, limits.max).astype(dtype)
    return np.ascontiguousarray(batch, dtype=dtype)
