"""Find models: bundled ones by name, or ONNX files by path, with their sibling precisions.

A model is a name plus one ONNX file per precision, named `<name>-<precision>.onnx`
(`unet-pets-int8.onnx`), plus files made for one provider, `<name>-<precision>.<provider>.onnx`
(`unet-pets-int8.openvino.onnx`). `--precision auto` picks, per provider and batch size, the
fastest precision the export measured there that passed its agreement check.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ModelError
from .metadata import PRECISIONS
from .onnxmeta import read_metadata

BUNDLED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODELS = {"segment": "unet-pets", "generate": "dcgan-fashion"}
_FILE_RE = re.compile(r"^(?P<name>.+)-(?P<precision>fp32|fp16|int8)\.onnx$")
_VARIANT_RE = re.compile(r"^(?P<name>.+)-(?P<precision>fp32|fp16|int8)\.(?P<provider>[a-z]+)\.onnx$")
OPENVINO_INT8 = "int8.openvino"

# Preference per provider where nothing was measured: on CPUs the fp32 file, since nothing
# says how an unchecked int8 file fares (the benchmark's seed-shaped int8 files, quantized
# without a check, agreed with fp32 on under 99% of pixels on every engine; OpenVINO's
# runtime broke a random-weight FCN-8s's int8 file to 0.5%). CUDA has few int8 kernels, so
# there half precision comes first. Measured files (every segen export) go by their figures.
PREFERENCE = {
    "cpu": ("fp32", "int8", "fp16"),
    "openvino": ("fp32", "int8", "fp16"),
    "cuda": ("fp16", "fp32", "int8"),
    "openvino-runtime": ("fp32", "fp16", "int8"),
}


@dataclass(frozen=True)
class Choice:
    """What to load: a precision, its file, and whether OpenVINO computes it in bf16."""

    precision: str  # fp32 | fp16 | int8 | bf16
    path: Path
    bf16: bool = False
    latency_ms: float | None = None  # as the export measured it on this provider, if it did
    cold_ms: float | None = None  # its cold start there (session and first run), if measured


@dataclass(frozen=True)
class ModelRef:
    """A model name and the ONNX file of each precision it ships in."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)  # precision -> path
    explicit: Path | None = None  # the file a user named; `auto` means exactly that file
    variants: dict[str, Path] = field(default_factory=dict)  # e.g. int8.openvino -> path

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.files]

    def pick(self, precision: str, provider: str, batch: int = 1) -> tuple[str, Path]:
        """The (precision, path) to load for `precision` (or auto) on `provider`."""
        choice = self.choose(precision, provider, batch)
        return choice.precision, choice.path

    def choose(self, precision: str, provider: str, batch: int = 1) -> Choice:
        """What to load for `precision` on `provider` at batch size `batch`.

        `auto` takes the fastest precision the export measured on this provider (at the
        measured batch size nearest `batch`) among those that passed their agreement check
        there, never one over budget; without measurements, the provider's preference order.
        bf16 is the fp32 file run by OpenVINO in bfloat16."""
        if precision == "bf16":
            if "fp32" not in self.files and self.explicit is None:
                raise ModelError(f"{self.name}: bf16 runs the fp32 file, and there is none")
            return Choice("bf16", self.files.get("fp32") or self.explicit, bf16=True)  # type: ignore[arg-type]
        if precision == "auto" and self.explicit is None:
            measured = self._measured_choice(provider, batch)
            if measured is not None:
                return measured
        if precision == "int8" and provider == "openvino" and OPENVINO_INT8 in self.variants:
            chosen = Choice("int8", self.variants[OPENVINO_INT8])
        else:
            chosen = Choice(*self._pick_file(precision, provider))
        # a precision or file the user fixed: still timed per engine in the card, so auto can
        # pick the engine it runs fastest on (never one where it failed its check)
        ms, cold = self._measured(provider, chosen.path, batch)
        return replace(chosen, latency_ms=ms, cold_ms=cold)

    def _measured(self, provider: str, path: Path, batch: int) -> tuple[float | None, float | None]:
        """The export's latency for the file at `path` on `provider` (at the measured batch
        nearest `batch`) and its cold start there, where it passed its agreement check
        there; else (None, None)."""
        named = {**self.files, **self.variants}
        keys = {key for key, p in named.items() if p == path}
        rows = self.measurements().get(provider, {}).get("precisions", {})
        for precision, row in rows.items():
            if not isinstance(row, dict) or row.get("bf16") or str(row.get("file", precision)) not in keys:
                continue
            timings = row.get("latency_ms") or {}
            if row.get("within_budget") is True and timings:
                return _at_batch(timings, batch), _cold(row)
        return None, None

    def recorded(self, key: str) -> Any:
        """One value of the model's segen metadata (e.g. "mode"), from its first file that
        has it, without opening a session; None where none does."""
        for path in [*self.files.values(), *self.variants.values()]:
            try:
                raw = read_metadata(path).get(f"segen.{key}")
                if raw is not None:
                    return json.loads(raw)
            except (ModelError, ValueError):
                continue
        return None

    def measurements(self) -> dict[str, Any]:
        """The export's per-provider figures from the card of this model's files."""
        for path in [*self.files.values(), *self.variants.values()]:
            try:
                props = read_metadata(path)
                card = json.loads(props.get("segen.card", "{}"))
            except (ModelError, ValueError):
                continue
            providers = card.get("export", {}).get("providers") if isinstance(card, dict) else None
            if isinstance(providers, dict):
                return providers
        return {}

    def _measured_choice(self, provider: str, batch: int) -> Choice | None:
        rows = self.measurements().get(provider, {}).get("precisions", {})
        best: tuple[float, Choice] | None = None
        for precision, row in rows.items():
            if not isinstance(row, dict) or row.get("within_budget") is not True:
                continue  # failed its agreement check on this provider: never picked
            bf16 = bool(row.get("bf16"))
            if bf16 and not _bf16_ok():
                continue
            file = str(row.get("file", precision))
            path = self.files.get(file) or self.variants.get(file)
            timings = row.get("latency_ms") or {}
            if path is None or not timings:
                continue
            ms = _at_batch(timings, batch)
            shown = "bf16" if bf16 else file.split(".")[0]
            if best is None or ms < best[0]:
                best = (ms, Choice(shown, path, bf16, ms, _cold(row)))
        return best[1] if best else None

    def _pick_file(self, precision: str, provider: str) -> tuple[str, Path]:
        if precision == "auto" and self.explicit is not None:
            match = _FILE_RE.match(self.explicit.name)
            return (match["precision"] if match else "auto"), self.explicit
        if precision == "auto":
            for candidate in PREFERENCE.get(provider, PRECISIONS):
                if candidate in self.files:
                    return candidate, self.files[candidate]
            raise ModelError(f"{self.name}: no ONNX file found")
        if precision not in self.files:
            have = ", ".join(self.precisions) or "none"
            if self.explicit is not None and not self.files:
                return precision, self.explicit  # a lone file: its metadata decides
            raise ModelError(
                f"{self.name}: no {precision} file (it ships in {have}); "
                f"use --precision auto or one of: {have}"
            )
        return precision, self.files[precision]


def _at_batch(timings: dict[str, Any], batch: int) -> float:
    """A card row's latency at the measured batch size nearest `batch`."""
    return float(timings[min(timings, key=lambda b: abs(int(b) - batch))])


def _cold(row: dict[str, Any]) -> float | None:
    value = row.get("cold_ms")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def bundled_models(folder: Path = BUNDLED_DIR) -> dict[str, ModelRef]:
    """The models shipped inside the package, by name."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.onnx")):
        match = _FILE_RE.match(path.name)
        if match:
            found.setdefault(match["name"], {})[match["precision"]] = path
    return {
        name: ModelRef(name, files, variants=_variants(folder, name)) for name, files in sorted(found.items())
    }


def _variants(folder: Path, name: str) -> dict[str, Path]:
    """Files made for one provider, `<name>-<precision>.<provider>.onnx`."""
    out = {}
    for path in sorted(folder.glob(f"{name}-*.*.onnx")):
        match = _VARIANT_RE.match(path.name)
        if match and match["name"] == name:
            out[f"{match['precision']}.{match['provider']}"] = path
    return out


def _bf16_ok() -> bool:
    from .providers import has_bf16

    return has_bf16()


def resolve(spec: str | None, task: str) -> ModelRef:
    """A model from a bundled name, an ONNX path, or the task's default when `spec` is None."""
    spec = spec or DEFAULT_MODELS[task]
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".onnx" or path.exists():
        if path.is_dir():
            raise ModelError(f"{spec}: is a folder; pass an .onnx file or a bundled model name")
        if not path.exists():
            raise ModelError(f"{spec}: model file not found")
        match = _FILE_RE.match(path.name)
        if not match:
            return ModelRef(path.stem, {}, explicit=path)
        # Sibling precisions of the same model, so --precision works on a folder of exports.
        files = {
            p: path.with_name(f"{match['name']}-{p}.onnx")
            for p in PRECISIONS
            if path.with_name(f"{match['name']}-{p}.onnx").exists()
        }
        return ModelRef(match["name"], files, explicit=path, variants=_variants(path.parent, match["name"]))
    bundled = bundled_models()
    if spec in bundled:
        return bundled[spec]
    names = ", ".join(bundled) or "none are installed"
    raise ModelError(f"{spec}: unknown model; pass an .onnx path or a bundled name ({names})")
