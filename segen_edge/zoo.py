"""Find models: bundled ones by name, or ONNX files by path, with their sibling precisions.

A model is a name plus one ONNX file per precision, named `<name>-<precision>.onnx`
(`unet-pets-int8.onnx`). `--precision auto` picks the file that suits the provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .metadata import PRECISIONS

BUNDLED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODELS = {"segment": "unet-pets", "generate": "dcgan-fashion"}
_FILE_RE = re.compile(r"^(?P<name>.+)-(?P<precision>fp32|fp16|int8)\.onnx$")

# Preference per provider. int8 QDQ runs on VNNI/AMX kernels on CPUs; CUDA has few int8
# kernels, so there half precision comes first.
PREFERENCE = {
    "cpu": ("int8", "fp32", "fp16"),
    "openvino": ("int8", "fp32", "fp16"),
    "cuda": ("fp16", "fp32", "int8"),
}


@dataclass(frozen=True)
class ModelRef:
    """A model name and the ONNX file of each precision it ships in."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)  # precision -> path
    explicit: Path | None = None  # the file a user named; `auto` means exactly that file

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.files]

    def pick(self, precision: str, provider: str) -> tuple[str, Path]:
        """The (precision, path) to load for `precision` (or auto) on `provider`."""
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


def bundled_models(folder: Path = BUNDLED_DIR) -> dict[str, ModelRef]:
    """The models shipped inside the package, by name."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.onnx")):
        match = _FILE_RE.match(path.name)
        if match:
            found.setdefault(match["name"], {})[match["precision"]] = path
    return {name: ModelRef(name, files) for name, files in sorted(found.items())}


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
        return ModelRef(match["name"], files, explicit=path)
    bundled = bundled_models()
    if spec in bundled:
        return bundled[spec]
    names = ", ".join(bundled) or "none are installed"
    raise ModelError(f"{spec}: unknown model; pass an .onnx path or a bundled name ({names})")
