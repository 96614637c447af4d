"""A training run directory: model_info.json (a ModelInfo dict) plus the trained Keras model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segen_edge.errors import MetadataError, ModelError
from segen_edge.metadata import ModelInfo

MODEL_FILES = {"segment": "model.keras", "generate": "generator.keras"}


@dataclass(frozen=True)
class Run:
    """What export needs from a training run."""

    path: Path
    info: ModelInfo
    model_path: Path

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.info.card)

    @property
    def name(self) -> str:
        return self.info.name or self.path.name


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; a missing or unreadable piece is a ModelError naming the fix."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ModelError(
            f"{path}: no such run folder; give the folder a training run wrote "
            "(model_info.json plus model.keras or generator.keras)"
        )
    info_path = path / "model_info.json"
    if not info_path.is_file():
        raise ModelError(
            f"{path}: no model_info.json, so this is not a training run folder; "
            "give the folder a training run wrote"
        )
    try:
        data = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{info_path}: not readable JSON ({exc}); re-run the training") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{info_path}: expected a JSON object (ModelInfo), got {type(data).__name__}")
    info = ModelInfo.from_dict(data, source=str(info_path))
    model_path = path / MODEL_FILES[info.task]
    if not model_path.is_file():
        raise ModelError(
            f"{path}: no {MODEL_FILES[info.task]} (the trained {info.task} model); "
            "the training did not finish or saved elsewhere; train again or give the right folder"
        )
    return Run(path, info, model_path)
