"""The README's Python API blocks run as written, in a folder that holds a photo.jpg."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
PETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-full" / "images"


def api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_an_api_section_with_code() -> None:
    assert len(api_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(api_blocks())))
def test_readme_api_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = sorted(PETS.glob("*.jpg"))[:1] if PETS.is_dir() else []
    if photos:
        Image.open(photos[0]).save(tmp_path / "photo.jpg")
    else:  # a synthetic photo where the shared data is absent
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3)).astype(np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(api_blocks()[index], f"README block {index}", "exec"), {"__name__": "readme"})
