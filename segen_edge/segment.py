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
from .pipeline import ordered_map

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
        """uint8 (h, w, c) image -> the model's float32 input in its own layout: (H, W, C),
        or (C, H, W) for an NCHW graph."""
        return preprocess(image_u8, self.info, channels_first=self.info.layout == "NCHW")

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """A batch of prepare()d inputs -> (N, H, W) uint8 class ids at model size."""
        nchw = self.info.layout == "NCHW"
        logits = self.run(np.ascontiguousarray(batch, dtype=np.float32))
        classes = logits.shape[1 if nchw else -1]
        if classes != len(self.info.class_names):
            names = ", ".join(self.info.class_names)
            raise ModelError(
                f"{self.loaded.path}: the model outputs {classes} classes but its metadata names "
                f"{len(self.info.class_names)} ({names}); give one name per class "
                "(segen.class_names, or --class-names for a bare ONNX file)"
            )
        return class_ids(logits) if nchw else np.argmax(logits, axis=-1).astype(np.uint8)

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
        lanes: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[ImageResult]:
        """Segment a stream of images, yielding one ImageResult per input, in input order.

        Inputs are grouped into batches of `batch_size` images in this thread (names planned,
        finished ones skipped); `lanes` threads then each take a whole batch: decode and
        resize, run the model, resize back, PNG-encode and write atomically. While one lane
        decodes or writes, another runs the model, so the cores stay busy without more
        threads than cores fighting over them. At most `lanes + 1` batches are in memory.
        When `stop` is set, the batches in progress are finished and written, and nothing
        new is started.
        """
        window = batch_size * 4  # finished inputs gathered before they are passed on

        def jobs() -> Iterator[_Job | ImageResult]:
            for src in sources:
                if src.error:
                    yield ImageResult(src, "failed", error=src.error)
                    continue
                targets = plan.targets(src)  # in input order, so names are stable
                done = not overwrite and all(p.is_file() for p in targets.values())
                yield _Job(src, targets, skip=done)

        def groups() -> Iterator[list[_Job | ImageResult]]:
            """Input-ordered groups of `batch_size` images to run; skipped and failed inputs
            ride along (a long run of them makes a group of its own)."""
            group: list[_Job | ImageResult] = []
            images = 0
            for item in jobs():
                if stop and stop.is_set():
                    return
                group.append(item)
                images += isinstance(item, _Job) and not item.skip
                if images == batch_size or (not images and len(group) >= window):
                    yield group
                    group, images = [], 0
            if group and not (stop and stop.is_set()):
                yield group

        def run(group: list[_Job | ImageResult]) -> list[ImageResult]:
            return self._run_group(group, max_pixels)

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-lane") as pool:
            # stop ends groups(): batches already handed to a lane are finished and yielded.
            for results in ordered_map(run, groups(), pool, lanes + 1):
                yield from results

    def _run_group(self, group: list[_Job | ImageResult], max_pixels: int) -> list[ImageResult]:
        """One lane's work: decode, run, write; one result per input of the group, in order."""
        out: list[ImageResult | _Loaded] = []
        for item in group:
            if isinstance(item, ImageResult):
                out.append(item)
                continue
            if item.skip:  # its outputs exist: reading the saved mask's fractions is lane work
                out.append(self._skipped(item.source, item.targets))
                continue
            try:
                decoded = load_image(item.source.path, self.info.channels, max_pixels)
                out.append(_Loaded(item.source, item.targets, decoded, self.prepare(decoded.image_u8)))
            except BadInputError as exc:
                out.append(ImageResult(item.source, "failed", error=str(exc)))
        loaded = [item for item in out if isinstance(item, _Loaded)]
        if not loaded:
            return [item for item in out if isinstance(item, ImageResult)]
        masks = iter(self.predict_batch(np.stack([item.model_input for item in loaded])))
        return [item if isinstance(item, ImageResult) else self._finish(item, next(masks)) for item in out]

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


def class_ids(logits: np.ndarray) -> np.ndarray:
    """argmax over axis 1 of (N, C, H, W) logits as uint8 (the first class wins a tie).

    One pass per class over contiguous planes: twice as fast as np.argmax(axis=1), whose
    strided reduction costs 0.4 ms per 160x160 image, a tenth of the model's time."""
    best = logits[:, 0].copy()
    ids = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, logits.shape[1]):
        plane = logits[:, c]
        ids[plane > best] = c
        np.maximum(best, plane, out=best)
    return ids


@dataclass
class _Job:
    source: Source
    targets: dict[str, Path]
    skip: bool = False  # outputs exist and no --overwrite: report them, run nothing


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
