"""Segmenter: images in, per-pixel class ids (and probabilities) out, at the image's size.

One fixed sequence per image: decode -> run over the image in the model's mode (resize,
tile or native; see tiling.py) -> probabilities -> class ids -> render. The batch job
(jobs.py) and `segment()` share every step, so the CLI's masks are the API's, bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from . import render, tiling
from .errors import BadInputError
from .files import atomic_write, save_image
from .images import DEFAULT_MAX_PIXELS, as_image_u8, resize_u8
from .metadata import ModelInfo
from .model import Model
from .probabilities import at_size, class_ids, ids_dtype, to_probabilities
from .resizing import resize_input, upsample

log = logging.getLogger("segen_edge")
ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray
RESIZE_BATCH = 16  # images per run in resize mode when segment() is given a list


@dataclass(frozen=True)
class RunSettings:
    """How a segmenter is run over one image; each None takes the model's recorded value."""

    mode: str | None = None  # resize | tile | native
    overlap: float | None = None  # tile mode, fraction of the tile in [0, 1)
    blend: str = "gaussian"  # tile mode: gaussian | linear | constant
    batch_size: int = 4  # tile mode: windows per run
    keep_aspect: bool | None = None  # resize mode: letterbox instead of squash
    probabilities: bool = False  # also return uint8 (K, H, W) probabilities

    def resolved(self, info: ModelInfo) -> RunSettings:
        """These settings with the model's defaults filled in, each checked once."""
        mode = self.mode or info.mode
        overlap = info.overlap if self.overlap is None else self.overlap
        tiling.check_mode(mode)
        tiling.check_overlap(overlap)
        tiling.check_blend(self.blend)
        tiling.check_batch(self.batch_size)
        keep = info.keep_aspect if self.keep_aspect is None else self.keep_aspect
        return RunSettings(mode, float(overlap), self.blend, self.batch_size, keep, self.probabilities)


@dataclass
class Segmentation:
    """One image's result: class ids at the image's size, and ways to render them.

    >>> result = segen_edge.load_segmenter("unet-pets").segment("cat.jpg")
    >>> result.fractions["pet"], result.ids.shape
    """

    ids: np.ndarray  # (H, W) uint8 class ids (uint16 beyond 256 classes)
    class_names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8
    image: np.ndarray | None = field(default=None, repr=False)  # the input, (H, W, C) uint8
    probabilities: np.ndarray | None = field(default=None, repr=False)  # (K, H, W) uint8, p * 255

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return (int(self.ids.shape[0]), int(self.ids.shape[1]))

    @property
    def fractions(self) -> dict[str, float]:
        """Class name -> share of the image's pixels."""
        shares = render.fractions(self.ids, len(self.class_names))
        return {name: round(float(v), 6) for name, v in zip(self.class_names, shares, strict=True)}

    def class_index(self, classes: str | int | Sequence[str | int]) -> tuple[int, ...]:
        """Class ids of names or ids; an unknown one is a BadInputError listing the names."""
        wanted = [classes] if isinstance(classes, (str, int)) else list(classes)
        return render.class_indices(wanted, self.class_names)

    def mask(self) -> Image.Image:
        """A palette PNG whose pixel values are class ids (16-bit grey beyond 256 classes)."""
        return render.mask_image(self.ids, self.palette)

    def colorize(self) -> np.ndarray:
        """(H, W, 3) uint8: each class in its palette colour."""
        return render.colorize(self.ids, self.palette)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """(H, W, 3) uint8: the colour mask blended over the image (alpha: mask's weight)."""
        return render.overlay(self._image("overlay"), self.ids, self.palette, alpha)

    def cutout(self, classes: str | int | Sequence[str | int], soft: bool = False) -> np.ndarray:
        """(H, W, 4) uint8 RGBA: the image where `classes` are, transparent elsewhere; with
        `soft`, its alpha is the probability of `classes` (soft edges, as background
        removers give), which needs the probabilities (segment with probabilities=True)."""
        keep = self.class_index(classes)
        if not soft:
            return render.cutout(self._image("cutout"), self.ids, keep)
        if self.probabilities is None:
            raise BadInputError("no probabilities: segment with probabilities=True (--save cutout-soft)")
        return render.cutout(
            self._image("cutout"), self.ids, keep, alpha=render.kept_alpha(self.probabilities, keep)
        )

    def binary(self, classes: str | int | Sequence[str | int]) -> np.ndarray:
        """(H, W) uint8: 255 where `classes` are, 0 elsewhere."""
        return render.binary(self.ids, self.class_index(classes))

    def render(
        self, kind: str, *, alpha: float = 0.5, keep: Sequence[str | int] = ()
    ) -> Image.Image | np.ndarray:
        """One output kind (see SAVE_KINDS) as a Pillow image or uint8 array."""
        if kind == "mask":
            return self.mask()
        if kind == "color":
            return self.colorize()
        if kind == "overlay":
            return self.overlay(alpha)
        if kind in KEEP_KINDS:
            if not keep:
                raise BadInputError(
                    f"--save {kind} needs --keep CLASS (one of {', '.join(self.class_names)})"
                )
            return self.binary(keep) if kind == "binary" else self.cutout(keep, soft=kind == "cutout-soft")
        raise BadInputError(f"--save {kind}: expected one of {', '.join(SAVE_KINDS)}")

    def save(self, path: str | os.PathLike[str], kind: str = "mask", **options: Any) -> Path:
        """Write one output kind atomically (PNG; `prob` writes an .npz of uint8 planes)."""
        path = Path(path)
        if kind == "prob":
            if self.probabilities is None:
                raise BadInputError("no probabilities: segment with probabilities=True (--save prob)")
            probs, names = self.probabilities, self.class_names
            atomic_write(path, lambda fh: render.write_probabilities(fh, probs, names))
        else:
            save_image(path, self.render(kind, **options))
        return path

    def _image(self, what: str) -> np.ndarray:
        if self.image is None:
            raise BadInputError(f"{what} needs the input image; this Segmentation was made without it")
        return self.image


SAVE_KINDS = ("mask", "color", "overlay", "cutout", "cutout-soft", "binary", "prob")
KEEP_KINDS = ("cutout", "cutout-soft", "binary")  # kinds that need --keep CLASS
PROB_KINDS = frozenset({"prob", "cutout-soft"})  # kinds made from the probabilities


class Segmenter(Model):
    """A segmentation model. Use `segen_edge.load_segmenter()` to make one.

    >>> seg = segen_edge.load_segmenter("unet-pets")
    >>> seg.segment("cat.jpg").save("cat.png")
    """

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def palette_u8(self) -> np.ndarray:
        return np.asarray(self.info.palette, dtype=np.uint8).reshape(-1, 3)

    # -- the public call ---------------------------------------------------------------

    @overload
    def segment(self, image: ImageInput, **settings: Any) -> Segmentation: ...

    @overload
    def segment(self, image: list[ImageInput], **settings: Any) -> list[Segmentation]: ...

    def segment(
        self, image: ImageInput | list[ImageInput], *, max_pixels: int = DEFAULT_MAX_PIXELS, **settings: Any
    ) -> Segmentation | list[Segmentation]:
        """Segment a path, a PIL image or an array (HxW, HxWx1/3/4; uint8 or uint16), or a
        list of them. Settings: mode, overlap, blend, batch_size, keep_aspect,
        probabilities (see RunSettings); each defaults to how the model was trained.

        >>> result = seg.segment("cat.jpg", probabilities=True)
        >>> result.ids.shape == result.size
        """
        run = self.settings(**settings)
        if isinstance(image, list):
            images = [as_image_u8(im, self.info.channels, max_pixels) for im in image]
            return self.segment_arrays(images, run)
        return self.segment_arrays([as_image_u8(image, self.info.channels, max_pixels)], run)[0]

    def settings(self, **settings: Any) -> RunSettings:
        """RunSettings from keyword arguments, the model's defaults filled in and checked."""
        try:
            run = RunSettings(**settings)
        except TypeError as exc:
            raise TypeError(
                f"segment(): {exc}; settings are {', '.join(RunSettings.__dataclass_fields__)}"
            ) from None
        run = run.resolved(self.info)
        if run.mode == "native" and self._fixed_size:
            raise BadInputError(
                f"{self.name}: mode native needs a graph with dynamic height and width, but this one "
                f"takes only {self.info.height}x{self.info.width}; use --mode tile or --mode resize"
            )
        return run

    # -- the steps, shared with the batch job ------------------------------------------

    def segment_arrays(self, images_u8: Sequence[np.ndarray], run: RunSettings) -> list[Segmentation]:
        """Decoded uint8 (H, W, C) images -> Segmentations. Resize mode runs the images as
        one batch; tile and native modes run each image's windows in batches."""
        if run.mode == "resize":
            results = self._resized(images_u8, run)
        else:
            results = [self._windowed(image, run) for image in images_u8]
        return [
            Segmentation(ids, self.info.class_names, self.palette_u8, image, probs)
            for image, (ids, probs) in zip(images_u8, results, strict=True)
        ]

    def probabilities(self, batch_u8: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, C) images at a size the model takes -> float32 (N, K, h, w)."""
        raw = self.run(self.info.preprocessing.to_model(batch_u8))
        return self._probabilities(raw, batch_u8.shape[1:3])

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Prepared float32 inputs at model size -> (N, H, W) class ids at model size."""
        probs = self._probabilities(
            self.run(np.ascontiguousarray(batch, dtype=np.float32)), self.info.image_size
        )
        return probs.argmax(axis=1).astype(ids_dtype(probs.shape[1]))

    def _probabilities(self, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A raw output for inputs of `size` -> float32 (N, K, *size) probabilities (a strided
        output upsampled to its input)."""
        probs = to_probabilities(
            raw,
            output=self.info.output,
            layout=self._output_layout(raw),
            num_classes=len(self.info.class_names),
        )
        return at_size(probs, size)

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        """uint8 (h, w, c) image -> the model's float32 input at its size, in its layout."""
        return self.info.preprocessing.to_model(resize_u8(image_u8, self.info.image_size))

    def _resized(
        self, images_u8: Sequence[np.ndarray], run: RunSettings
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        size = self.info.image_size
        prepared = [resize_input(image, size, bool(run.keep_aspect)) for image in images_u8]
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for start in range(0, len(prepared), RESIZE_BATCH):
            group = prepared[start : start + RESIZE_BATCH]
            images = images_u8[start : start + RESIZE_BATCH]
            batch = np.stack([model_input for model_input, _ in group])
            if (
                not run.probabilities
                and self.info.output != "ids"
                and all(i.shape[:2] == size for i in images)
            ):
                # at the model's own size nothing is interpolated, and softmax keeps the
                # order of the logits: the class ids are their argmax, no softmax needed
                raw = self.run(self.info.preprocessing.to_model(batch))
                nhwc = raw.ndim == 4 and self._output_layout(raw) == "NHWC"
                logits = raw.transpose(0, 3, 1, 2) if nhwc else raw
                if (
                    logits.ndim == 4
                    and logits.shape[1] == len(self.info.class_names)
                    and logits.shape[2:] == size
                ):
                    out.extend((ids, None) for ids in class_ids(logits))
                    continue
            probs = self.probabilities(batch)
            for (_, box), image, p in zip(group, images, probs, strict=True):
                out.append(upsample(p, box, image.shape[:2], want_probs=run.probabilities))
        return out

    def _windowed(self, image_u8: np.ndarray, run: RunSettings) -> tuple[np.ndarray, np.ndarray | None]:
        assert run.mode is not None and run.overlap is not None
        return tiling.segment_image(
            image_u8,
            self.probabilities,
            mode=run.mode,
            model_size=self.info.image_size,
            tile=self.info.tile,
            overlap=run.overlap,
            blend=run.blend,
            batch_size=run.batch_size,
            stride=self.info.stride,
            want_probs=run.probabilities,
        )

    @property
    def _fixed_size(self) -> bool:
        shape = self._session.get_inputs()[0].shape
        dims = shape[2:4] if self.info.layout == "NCHW" else shape[1:3]
        return all(isinstance(d, int) and d > 0 for d in dims)

    def _output_layout(self, raw: np.ndarray) -> str:
        """Where the class axis of an output is: the model's layout when it fits, else the
        other one (an NHWC graph that returns NCHW, as some converters make)."""
        classes = len(self.info.class_names)
        if raw.ndim != 4 or self.info.output == "ids":
            return self.info.layout
        first, last = raw.shape[1] == classes, raw.shape[3] == classes
        if self.info.layout == "NCHW":
            if first or not last:
                return "NCHW"
            return "NHWC"
        if last or not first:
            return "NHWC"
        return "NCHW"
