"""scripts/label_offset.py finds a label drawn off its image, on pairs built here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_offset.py"


def write_pairs(root: Path, shift: tuple[int, int], count: int = 4) -> None:
    """Grey images with dark random lines; labels 0 on the lines, moved by `shift` (rows, cols)."""
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i in range(count):
        lines = np.zeros((96, 96), bool)
        lines[rng.integers(0, 96, 6), :] = True
        lines[:, rng.integers(0, 96, 6)] = True
        grey = np.where(lines, 40, 200) + rng.integers(-20, 20, lines.shape)
        Image.fromarray(grey.clip(0, 255).astype(np.uint8)).save(root / "image" / f"{i}.png")
        label = np.where(np.roll(lines, shift, axis=(0, 1)), 0, 255).astype(np.uint8)
        Image.fromarray(label).save(root / "label" / f"{i}.png")


def measured(root: Path) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"move the labels ([-+][\d.]+) px down and ([-+][\d.]+) px right", out)
    assert found, out
    return float(found[1]), float(found[2])


def test_a_label_one_row_above_its_lines_is_found(tmp_path: Path) -> None:
    write_pairs(tmp_path / "up", (-1, 0))
    dy, dx = measured(tmp_path / "up")
    assert abs(dy - 1.0) < 0.05 and abs(dx) < 0.05


def test_aligned_labels_and_a_sideways_offset(tmp_path: Path) -> None:
    write_pairs(tmp_path / "aligned", (0, 0))
    dy, dx = measured(tmp_path / "aligned")
    assert abs(dy) < 0.05 and abs(dx) < 0.05
    write_pairs(tmp_path / "right", (0, 2))
    dy, dx = measured(tmp_path / "right")
    assert abs(dy) < 0.05 and abs(dx + 2.0) < 0.05


def test_a_folder_without_pairs_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "no image/label pairs" in run.stderr and "Traceback" not in run.stderr
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
