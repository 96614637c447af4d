"""segen_edge.masks: layouts, encodings, names and colours (numpy + Pillow, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segen_edge.errors import BadInputError
from segen_edge.masks import (
    ENCODINGS,
    IGNORE_INDEX,
    count_classes,
    default_class_names,
    default_palette,
    detect_encoding,
    find_pairs,
    load_mask,
)


def _save(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        img.putpalette(palette)
    img.save(path)
    return path


def _photo(path: Path) -> Path:
    return _save(path, np.full((4, 5, 3), 120, np.uint8))


def _palette_png(path: Path, ids: np.ndarray) -> Path:
    img = Image.new("P", (ids.shape[1], ids.shape[0]))
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.putdata(ids.reshape(-1).tolist())
    img.save(path)
    return path


IDS = np.array([[0, 1, 2, 255], [2, 1, 0, 0]], dtype=np.uint8)


def test_encodings_listed() -> None:
    assert ENCODINGS == ("auto", "index", "binary", "trimap", "palette")
    assert IGNORE_INDEX == 255


def test_trimap_maps_pet_background_border(tmp_path: Path) -> None:
    raw = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.uint8)
    path = _save(tmp_path / "t.png", raw)
    assert detect_encoding([path]) == "trimap"
    expected = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(load_mask(path, "trimap"), expected)
    np.testing.assert_array_equal(load_mask(path, "auto"), expected)
    assert default_class_names("trimap", 3) == ("pet", "background", "border")


def test_binary_0_255_becomes_0_1(tmp_path: Path) -> None:
    path = _save(tmp_path / "b.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    assert detect_encoding([path]) == "binary"
    np.testing.assert_array_equal(load_mask(path, "binary"), [[0, 1], [1, 0]])
    assert load_mask(path, "binary").dtype == np.uint8


def test_binary_thresholds_grey_levels(tmp_path: Path) -> None:
    path = _save(tmp_path / "g.png", np.array([[0, 100, 128, 250]], dtype=np.uint8))
    assert detect_encoding([path]) == "binary"
    np.testing.assert_array_equal(load_mask(path, "binary"), [[0, 0, 1, 1]])


def test_index_png_keeps_ids_and_ignore(tmp_path: Path) -> None:
    path = _save(tmp_path / "i.png", IDS)
    assert detect_encoding([path]) == "index"
    np.testing.assert_array_equal(load_mask(path, "index"), IDS)
    assert count_classes([load_mask(path, "index")], "index") == 3


def test_palette_png_index_is_class_and_255_ignored(tmp_path: Path) -> None:
    path = _palette_png(tmp_path / "p.png", IDS)
    assert detect_encoding([path]) == "palette"
    mask = load_mask(path, "palette")
    np.testing.assert_array_equal(mask, IDS)
    assert count_classes([mask], "palette") == 3


def test_palette_rejects_grey_png(tmp_path: Path) -> None:
    path = _save(tmp_path / "i.png", IDS)
    with pytest.raises(BadInputError, match="not a palette PNG"):
        load_mask(path, "palette")


def test_colour_mask_is_a_clear_error(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    path = _save(tmp_path / "c.png", rgb)
    with pytest.raises(BadInputError, match="colour"):
        load_mask(path, "auto")


def test_unknown_encoding(tmp_path: Path) -> None:
    path = _save(tmp_path / "i.png", IDS)
    with pytest.raises(BadInputError, match="expected one of"):
        load_mask(path, "rgb")


@pytest.mark.parametrize(
    ("images", "masks", "base"),
    [
        ("images", "trimaps", ""),
        ("images", "masks", ""),
        ("images", "labels", ""),
        ("images", "annotations", ""),
        ("image", "label", "train"),
        ("JPEGImages", "SegmentationClass", ""),
    ],
)
def test_find_pairs_layouts(tmp_path: Path, images: str, masks: str, base: str) -> None:
    root = tmp_path / "data"
    for stem in ("b", "a", "c"):
        _photo(root / base / images / f"{stem}.jpg")
    for stem in ("a", "b"):  # c has no mask: left out
        _save(root / base / masks / f"{stem}.png", IDS)
    (root / base / masks / ".hidden.png").write_bytes(b"junk")
    pairs = find_pairs(root)
    assert [p.stem for p in pairs] == ["a", "b"]
    assert pairs[0].image.name == "a.jpg" and pairs[0].mask is not None
    assert pairs[0].mask.name == "a.png"
    all_pairs = find_pairs(root, require_masks=False)
    assert [(p.stem, p.mask is None) for p in all_pairs] == [("a", False), ("b", False), ("c", True)]


def test_find_pairs_matches_mask_suffix(tmp_path: Path) -> None:
    _photo(tmp_path / "images" / "x1.png")
    _save(tmp_path / "masks" / "x1_mask.png", IDS)
    assert [p.stem for p in find_pairs(tmp_path)] == ["x1"]


def test_find_pairs_error_names_folder_and_layouts(tmp_path: Path) -> None:
    _photo(tmp_path / "photos" / "a.jpg")
    with pytest.raises(BadInputError) as info:
        find_pairs(tmp_path)
    assert str(tmp_path) in str(info.value) and "images/ + masks/" in str(info.value)
    with pytest.raises(BadInputError, match="no such folder"):
        find_pairs(tmp_path / "missing")


def test_default_names_and_palettes() -> None:
    assert default_class_names("binary", 2) == ("background", "foreground")
    assert default_class_names("index", 4) == ("class_0", "class_1", "class_2", "class_3")
    assert default_class_names("palette", 21)[15] == "person"
    for n in (2, 3, 12, 40):
        colours = default_palette(n)
        assert len(colours) == n and len(set(colours)) == n
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    assert default_palette(3, "palette") == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert default_palette(2, "binary") == ((0, 0, 0), (255, 255, 255))
