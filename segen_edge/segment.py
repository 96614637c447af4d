"""Segmenter: preprocess, run, argmax, resize back, colorize; and the streaming batch job.

One bad image never stops a batch: each file ends as an ImageResult (ok, skipped or failed),
and every output file is written atomically.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import BadInputError, ModelError
from .images import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    Source,
    WriteError,
    glob_root,
    load_image,
    preprocess,
    resize_u8,
    save_image,
)
from .model import Model
from .pipeline import cpu_count, ordered_map

SAVE_KINDS = ("mask", "color", "overlay")


@dataclass
class ImageResult:
    """What became of one input image."""

    source: Source
    status: str  # ok | skipped | failed
    outputs: list[Path] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (height, width) of the input
    fractions: dict[str, float] | None = None  # class name -> fraction of pixels
    error: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": str(self.source.path), "status": self.status}
        if self.outputs:
            entry["outputs"] = [str(p) for p in self.outputs]
        if self.size:
            entry["size"] = list(self.size)
        if self.fractions is not None:
            entry["class_fractions"] = self.fractions
        if self.error:
            entry["error"] = self.error
        if self.note:
            entry["note"] = self.note
        return entry


class Segmenter(Model):
    """A segmentation model: images in, per-pixel class ids out."""

    # -- single-image and batch primitives ----------------------------------------------

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        return preprocess(image_u8, self.info)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 inputs -> (N, H, W) uint8 class ids at model size."""
        return self._predict(batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        nchw = self.info.layout == "NCHW"
        logits = self.run(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if nchw else batch)
        classes = logits.shape[1 if nchw else -1]
        if classes != len(self.info.class_names):
            names = ", ".join(self.info.class_names)
            raise ModelError(
                f"{self.loaded.path}: the model outputs {classes} classes but its metadata names "
                f"{len(self.info.class_names)} ({names}); give one name per class "
                "(segen.class_names, or --class-names for a bare ONNX file)"
            )
        return np.argmax(logits, axis=1 if nchw else -1).astype(np.uint8)

    def predict(self, image_u8: np.ndarray) -> np.ndarray:
        """One uint8 image -> (height, width) class ids at the image's own size."""
        mask = self.predict_batch(self.prepare(image_u8)[None])[0]
        return resize_u8(mask, image_u8.shape[:2], nearest=True)

    # -- rendering ----------------------------------------------------------------------

    @property
    def palette_u8(self) -> np.ndarray:
        return np.asarray(self.info.palette, dtype=np.uint8).reshape(-1, 3)

    def mask_image(self, mask: np.ndarray) -> Image.Image:
        """A palette PNG whose pixel values are class ids, coloured by the model's palette."""
        img = Image.fromarray(mask, mode="P")
        flat = self.palette_u8.flatten().tolist()
        img.putpalette(flat + [0] * (768 - len(flat)))
        return img

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        return self.palette_u8[mask]

    def overlay(self, image_u8: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        rgb = image_u8 if image_u8.shape[2] == 3 else np.repeat(image_u8, 3, axis=2)
        blend = rgb.astype(np.float32) * (1 - alpha) + self.colorize(mask) * alpha
        return np.clip(blend, 0, 255).astype(np.uint8)

    def fractions(self, mask: np.ndarray) -> dict[str, float]:
        counts = np.bincount(mask.ravel(), minlength=len(self.info.class_names))
        total = max(int(mask.size), 1)
        return {name: round(float(counts[i]) / total, 6) for i, name in enumerate(self.info.class_names)}

    # -- the batch job ------------------------------------------------------------------

    def segment_files(
        self,
        sources: Iterable[Source],
        plan: OutputPlan,
        batch_size: int = 8,
        overwrite: bool = False,
        stop: threading.Event | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        lanes: int = 1,
    ) -> Iterator[ImageResult]:
        """Segment a stream of images, yielding one ImageResult per input, in input order.

        Worker threads decode and resize ahead of the model; `lanes` batches run at once,
        each finishing its own images (resize back, PNG encode, atomic write) in its lane.
        At most a few batches are in memory at any time. When `stop` is set, the batches in
        progress are finished and written, and nothing new is started.
        """
        workers = workers or max(2, cpu_count())
        window = max(batch_size * (lanes + 2), workers * 2)
        planned = ((src, {} if src.error else plan.targets(src)) for src in sources)  # names in order

        def load(item: tuple[Source, dict[str, Path]]) -> _Loaded | ImageResult:
            src, targets = item
            if src.error:
                return ImageResult(src, "failed", error=src.error)
            if not overwrite and all(p.is_file() for p in targets.values()):
                return self._skipped(src, targets)
            try:
                decoded = load_image(src.path, self.info.channels, max_pixels)
                return _Loaded(src, targets, decoded, self.prepare(decoded.image_u8))
            except BadInputError as exc:
                return ImageResult(src, "failed", error=str(exc))

        def batches(loaded: Iterable[_Loaded | ImageResult]) -> Iterator[list[_Loaded | ImageResult]]:
            """Input-ordered groups holding `batch_size` decoded images each; skipped and
            failed inputs ride along (a long run of them makes a group of its own)."""
            group: list[_Loaded | ImageResult] = []
            images = 0
            for item in loaded:
                group.append(item)
                images += isinstance(item, _Loaded)
                if images == batch_size or (not images and len(group) >= window):
                    yield group
                    group, images = [], 0
            if stop and stop.is_set():  # a part batch is not started after a stop
                group = [item for item in group if isinstance(item, ImageResult)]
            if group:
                yield group

        with (
            ThreadPoolExecutor(workers, thread_name_prefix="segen-io") as io,
            ThreadPoolExecutor(lanes, thread_name_prefix="segen-run") as runners,
        ):
            # stop reaches the decoders only: batches already decoded are run and written.
            for results in ordered_map(
                self._run_batch, batches(ordered_map(load, planned, io, window, stop)), runners, lanes + 1
            ):
                yield from results

    def _run_batch(self, group: list[_Loaded | ImageResult]) -> list[ImageResult]:
        images = [item for item in group if isinstance(item, _Loaded)]
        if not images:
            return [item for item in group if isinstance(item, ImageResult)]
        masks = iter(self.predict_batch(np.stack([item.model_input for item in images])))
        return [item if isinstance(item, ImageResult) else self._finish(item, next(masks)) for item in group]

    def _finish(self, item: _Loaded, mask_small: np.ndarray) -> ImageResult:
        image = item.decoded.image_u8
        mask = resize_u8(mask_small, image.shape[:2], nearest=True)
        writers: dict[str, Callable[[], Image.Image | np.ndarray]] = {
            "mask": lambda: self.mask_image(mask),
            "color": lambda: self.colorize(mask),
            "overlay": lambda: self.overlay(image, mask),
        }
        try:
            for kind, path in item.targets.items():
                save_image(path, writers[kind]())
        except OSError as exc:
            error = str(exc) if isinstance(exc, WriteError) else f"{path}: cannot write ({exc})"
            return ImageResult(item.source, "failed", error=error)
        return ImageResult(
            item.source,
            "ok",
            outputs=list(item.targets.values()),
            size=item.decoded.size,
            fractions=self.fractions(mask),
            note=item.decoded.note,
        )

    def _skipped(self, src: Source, targets: dict[str, Path]) -> ImageResult:
        """An input whose outputs exist already; its fractions come from the saved mask."""
        fractions = None
        if "mask" in targets:
            try:
                with Image.open(targets["mask"]) as img:
                    fractions = self.fractions(np.asarray(img))
            except (OSError, ValueError):
                fractions = None
        return ImageResult(src, "skipped", outputs=list(targets.values()), fractions=fractions)


@dataclass
class _Loaded:
    source: Source
    targets: dict[str, Path]
    decoded: Decoded
    model_input: np.ndarray


class OutputPlan:
    """Where each input's outputs go: `<out>/<relative folder>/<stem>.png` and friends.

    The input tree is mirrored under `out`, so equal stems in different folders never
    collide; two inputs of one folder with the same stem (a.jpg, a.png) get distinct
    names. When `out` is (inside) an input folder, every output takes a `.mask.png` /
    `.color.png` / `.overlay.png` name, which the input scan skips, so no input is ever
    overwritten and a re-run does not segment its own outputs.
    """

    def __init__(self, out_dir: Path, save: Sequence[str], inputs: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.save = tuple(save)
        out = _real(out_dir)
        roots = [_real(_root_of(arg)) for arg in inputs]
        self.suffixed = any(out == r or r in out.parents for r in roots)
        self._claimed: set[Path] = set()

    def targets(self, src: Source) -> dict[str, Path]:
        base = self.out_dir / src.rel.parent / src.rel.stem
        if base in self._claimed:  # a.jpg after a.png: keep both
            alias = f"{src.rel.stem}_{src.rel.suffix.lstrip('.').lower()}"
            base, n = base.with_name(alias), 2
            while base in self._claimed:  # a third a.png (files named one by one)
                base, n = base.with_name(f"{alias}{n}"), n + 1
        self._claimed.add(base)
        names = {
            "mask": ".mask.png" if self.suffixed else ".png",
            "color": ".color.png",
            "overlay": ".overlay.png",
        }
        out = {kind: base.with_name(base.name + names[kind]) for kind in self.save}
        if any(_real(p) == _real(src.path) for p in out.values()):
            out = {k: base.with_name(base.name + f".{k}.png") for k in self.save}
        return out


def _real(path: Path) -> Path:
    """Path.resolve without its RuntimeError on a symlink loop (Python < 3.13): a looping
    input is reported by the decoder as one failed file, it must not stop the batch."""
    return Path(os.path.realpath(path))


def _root_of(arg: str) -> Path:
    """The folder an input argument scans: itself, its parent, or a glob's fixed prefix."""
    if glob.has_magic(arg):
        return glob_root(arg)
    path = Path(arg)
    return path if path.is_dir() else path.parent
