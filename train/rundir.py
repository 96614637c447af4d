"""Run directories: atomic JSON and model files, and the state a resumed run continues from."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import keras

from segen_edge.files import write_text

STATE = "state.json"


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save a .keras file whole or not at all (write beside it, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.keras")
    model.save(tmp)
    os.replace(tmp, path)
