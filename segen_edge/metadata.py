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

from .errors import MetadataError

SCHEMA_VERSION = 1
PREFIX = "segen."
TASKS = ("segment", "generate")
LAYOUTS = ("NHWC", "NCHW")
PRECISIONS = ("fp32", "fp16", "int8")
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

    if name in ("image_size",):
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
    if name in ("channels", "latent_size", "schema_version"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
        return value
    if name in ("pixel_scale", "pixel_offset"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail("a number")
        return float(value)
    if name in ("task", "arch", "layout", "precision", "name", "exporter_version"):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if name == "card":
        if not isinstance(value, dict):
            raise fail("a JSON object")
        return value
    return value


def stamp_onnx(model: Any, info: ModelInfo) -> None:
    """Merge `info` into an onnx.ModelProto's metadata_props, keeping foreign keys."""
    props = {p.key: p.value for p in model.metadata_props}
    props = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
    props.update(info.to_props())
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
