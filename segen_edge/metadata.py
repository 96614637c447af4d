"""ModelInfo: the schema of the `segen.*` keys stored in an ONNX file's metadata_props.

Every value is JSON. One frozen dataclass is both the writer's and the reader's schema, so
training, export and the runtime cannot drift apart. A pixel becomes a model value as
``value = pixel * pixel_scale + pixel_offset``; a generator's output is turned back into
pixels by the inverse.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from .errors import MetadataError

SCHEMA_VERSION = 1
PREFIX = "segen."
TASKS = ("segment", "generate")
LAYOUTS = ("NHWC", "NCHW")
PRECISIONS = ("fp32", "fp16", "int8")
MODES = ("resize", "tile", "native")  # how a segmenter is run over an image (see tiling.py)
OUTPUTS = ("logits", "probs", "ids")  # what a segmenter's graph returns
MAX_SIDE = 65536  # larger model inputs are a typo, not a model

Task = Literal["segment", "generate"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know to feed a model and read its output."""

    task: Task
    arch: str
    image_size: tuple[int, int]  # (height, width)
    channels: int = 3
    layout: str = "NHWC"  # of both input and output tensors
    pixel_scale: float = 1.0 / 255.0
    pixel_offset: float = 0.0
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    latent_size: int = 0
    # Per-channel normalization as torchvision/timm write it, in 0..1 pixel units:
    # value = (pixel / 255 - mean) / std. When given, it replaces pixel_scale/pixel_offset.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    output: str = "logits"  # logits | probs | ids (a graph ending in ArgMax)
    # How the model was trained, so the runtime runs it the same way over any image size:
    # resize (whole images resized to image_size), tile (crops at native scale: windows of
    # tile_size with `overlap`), native (whole image, padded to a multiple of `stride`).
    mode: str = "resize"
    tile_size: tuple[int, ...] = ()  # (height, width); () = image_size
    overlap: float = 0.25
    keep_aspect: bool = False  # resize mode: letterboxed to image_size, not squashed
    stride: int = 32  # the network's total downsampling; native mode pads to a multiple
    precision: str = "fp32"
    name: str = ""
    exporter_version: str = ""
    schema_version: int = SCHEMA_VERSION
    card: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()

    # -- validation ---------------------------------------------------------------------

    def _check(self) -> None:
        def bad(key: str, got: object, expected: str) -> MetadataError:
            return MetadataError(f"metadata key '{PREFIX}{key}' is {got!r}; expected {expected}")

        if self.task not in TASKS:
            raise bad("task", self.task, "one of " + ", ".join(TASKS))
        if self.layout not in LAYOUTS:
            raise bad("layout", self.layout, "one of " + ", ".join(LAYOUTS))
        if self.precision not in PRECISIONS:
            raise bad("precision", self.precision, "one of " + ", ".join(PRECISIONS))
        size = self.image_size
        if len(size) != 2 or not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in size):
            raise bad("image_size", list(size), f"[height, width] of two integers in 1..{MAX_SIDE}")
        if self.channels not in (1, 3):
            raise bad("channels", self.channels, "1 (grey) or 3 (RGB)")
        if not math.isfinite(self.pixel_scale) or self.pixel_scale == 0:
            raise bad("pixel_scale", self.pixel_scale, "a finite, non-zero number")
        if not math.isfinite(self.pixel_offset):
            raise bad("pixel_offset", self.pixel_offset, "a finite number")
        if self.mean or self.std:
            if len(self.mean) != self.channels or len(self.std) != self.channels:
                raise bad(
                    "mean",
                    [list(self.mean), list(self.std)],
                    f"mean and std of {self.channels} values each, one per channel",
                )
            if not all(math.isfinite(v) for v in self.mean):
                raise bad("mean", list(self.mean), "finite numbers")
            if not all(math.isfinite(v) and v > 0 for v in self.std):
                raise bad("std", list(self.std), "finite numbers above 0")
        if self.output not in OUTPUTS:
            raise bad("output", self.output, "one of " + ", ".join(OUTPUTS))
        if self.mode not in MODES:
            raise bad("mode", self.mode, "one of " + ", ".join(MODES))
        tile = self.tile_size
        if tile and (len(tile) != 2 or not all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in tile)):
            raise bad("tile_size", list(tile), f"[height, width] of two integers in 1..{MAX_SIDE}")
        if not (isinstance(self.overlap, (int, float)) and 0.0 <= self.overlap < 1.0):
            raise bad("overlap", self.overlap, "a fraction in [0, 1)")
        if not (isinstance(self.stride, int) and 1 <= self.stride <= 1024):
            raise bad("stride", self.stride, "an integer in 1..1024")
        if self.task == "segment":
            if len(self.class_names) < 2:
                raise bad("class_names", list(self.class_names), "at least two class names")
            if len(self.palette) != len(self.class_names):
                raise bad("palette", len(self.palette), f"{len(self.class_names)} colours, one per class")
            for colour in self.palette:
                if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                    raise bad("palette", list(colour), "[r, g, b] colours of 0..255")
        if self.task == "generate" and self.latent_size <= 0:
            raise bad("latent_size", self.latent_size, "a positive integer for a generator")

    # -- (de)serialisation --------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def tile(self) -> tuple[int, int]:
        """The window of tile mode: tile_size, else image_size."""
        if len(self.tile_size) == 2:
            return (self.tile_size[0], self.tile_size[1])
        return self.image_size

    @property
    def preprocessing(self) -> Preprocessing:
        """The one object that turns pixels into model values and back (see Preprocessing)."""
        if self.mean:
            scale = tuple(1.0 / (255.0 * s) for s in self.std)
            offset = tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))
        else:
            scale = (self.pixel_scale,) * self.channels
            offset = (self.pixel_offset,) * self.channels
        return Preprocessing(self.layout, self.channels, scale, offset)

    @property
    def width(self) -> int:
        return self.image_size[1]

    def replace(self, **changes: Any) -> ModelInfo:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[field.name] = value
        return out

    def to_props(self) -> dict[str, str]:
        """The `segen.*` metadata_props entries, each value JSON-encoded."""
        return {PREFIX + k: json.dumps(v, sort_keys=True) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model") -> ModelInfo:
        """Build from plain values (e.g. a training run's model_info.json)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        required = [
            n
            for n, f in known.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            keys = ", ".join(PREFIX + n for n in missing)
            raise MetadataError(
                f"{source}: missing segen metadata {keys}; export the model with "
                "'segen-edge export' or pass --image-size (and --class-names or --latent-size)"
            )
        kwargs: dict[str, Any] = {}
        try:
            for name, value in data.items():
                if name not in known:
                    continue  # keys from a newer schema are ignored, not fatal
                kwargs[name] = _coerce(name, value)
            return cls(**kwargs)
        except MetadataError as exc:
            raise MetadataError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: malformed segen metadata ({exc})") from None

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Parse the metadata_props of an ONNX file (or an ORT custom_metadata_map)."""
        data: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(PREFIX):
                continue
            try:
                data[key[len(PREFIX) :]] = json.loads(raw)
            except (json.JSONDecodeError, TypeError, RecursionError):
                raise MetadataError(
                    f"{source}: metadata key '{key}' is not valid JSON: {str(raw)[:60]!r}"
                ) from None
        if not data:
            raise MetadataError(f"{source}: no segen.* metadata; export the model with 'segen-edge export'")
        return cls.from_dict(data, source)


def _coerce(name: str, value: Any) -> Any:
    """Turn JSON values into the dataclass's field types, naming the key when that fails."""

    def fail(expected: str) -> MetadataError:
        return MetadataError(f"metadata key '{PREFIX}{name}' is {value!r}; expected {expected}")

    if name in ("image_size", "tile_size"):
        if name == "tile_size" and value in ([], (), None):
            return ()
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise fail("[height, width]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise fail("[height, width] of integers")
        return (int(value[0]), int(value[1]))
    if name == "class_names":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise fail("a list of class names")
        return tuple(value)
    if name == "palette":
        if not isinstance(value, (list, tuple)):
            raise fail("a list of [r, g, b] colours")
        colours = []
        for colour in value:
            if (
                not isinstance(colour, (list, tuple))
                or len(colour) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in colour)
            ):
                raise fail("a list of [r, g, b] colours")
            colours.append((int(colour[0]), int(colour[1]), int(colour[2])))
        return tuple(colours)
    if name in ("mean", "std"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise fail("a list of numbers, one per channel")
        return tuple(float(v) for v in value)
    if name == "overlap":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail("a number in [0, 1)")
        return float(value)
    if name == "keep_aspect":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if name in ("channels", "latent_size", "schema_version", "stride"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
        return value
    if name in ("pixel_scale", "pixel_offset"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail("a number")
        return float(value)
    if name in ("task", "arch", "layout", "precision", "name", "exporter_version", "output", "mode"):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if name == "card":
        if not isinstance(value, dict):
            raise fail("a JSON object")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Pixels <-> model values, and the model's tensor layout: the one copy of both.

    ``value = pixel * scale[c] + offset[c]`` per channel c. Runtime, export and training
    all feed models through `to_model` and read generated images through `to_pixels`.
    """

    layout: str  # NHWC | NCHW
    channels: int
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @property
    def channels_first(self) -> bool:
        return self.layout == "NCHW"

    def _coefficients(self, channels_first: bool) -> tuple[np.ndarray, np.ndarray]:
        """scale and offset shaped to broadcast over (N, H, W, C) or (N, C, H, W) arrays;
        0-d when every channel shares them (so any array shape works)."""
        if len(set(self.scale)) == 1 and len(set(self.offset)) == 1:
            return np.float32(self.scale[0]), np.float32(self.offset[0])  # type: ignore[return-value]
        shape = (-1, 1, 1) if channels_first else (-1,)
        return (
            np.asarray(self.scale, np.float32).reshape(shape),
            np.asarray(self.offset, np.float32).reshape(shape),
        )

    def to_model(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) or (H, W, C) images -> float32 model input in the model's layout.

        NCHW inputs are transposed while still uint8, in the pass that scales."""
        single = images_u8.ndim == 3
        batch = images_u8[None] if single else images_u8
        if self.channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        scale, offset = self._coefficients(self.channels_first)
        out = np.empty(batch.shape, np.float32)
        np.multiply(batch, scale, out=out, casting="unsafe")
        if np.any(offset):  # [0, 1] scaling (offset 0) needs no second pass
            out += offset
        return out[0] if single else out

    def to_nhwc(self, values: np.ndarray) -> np.ndarray:
        """A (N, ...) tensor in the model's layout -> channels last (a view when NHWC)."""
        return values.transpose(0, 2, 3, 1) if self.channels_first else values

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Model values in the model's layout (N, H, W, C) or (N, C, H, W) -> uint8 pixels,
        channels last."""
        nhwc = self.to_nhwc(values) if values.ndim == 4 else values
        scale, offset = self._coefficients(False)
        pixels = (nhwc.astype(np.float32) - offset) / scale
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def stamp_onnx(model: Any, info: ModelInfo) -> None:
    """Merge `info` into an onnx.ModelProto's metadata_props, keeping foreign keys."""
    props = {p.key: p.value for p in model.metadata_props}
    props = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
    props.update(info.to_props())
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
