"""segen_edge.masks (layouts, decoding, colours) and train.labels (encoding detection, class
counts, names, ignore indices, class weights): numpy + Pillow, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segen_edge.errors import BadInputError
from segen_edge.masks import ENCODINGS, default_palette, find_pairs, load_mask
from segen_edge.metrics import IGNORE_INDEX
from train.labels import (
    check_ignore_indices,
    class_pixel_counts,
    count_classes,
    default_class_names,
    detect_encoding,
    median_frequency_weights,
    parse_class_weights,
    remap_ignored,
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


def test_void_label_is_not_a_class() -> None:
    masks = [np.array([[0, 10, 11], [11, 3, 255]], np.uint8), np.array([[2, 11]], np.uint8)]
    assert count_classes(masks, "index") == 12  # 11 read as a class without --ignore-index
    assert count_classes(masks, "index", ignore_index=(11,)) == 11
    remapped = [remap_ignored(m, (11,)) for m in masks]
    assert count_classes(remapped, "index") == 11
    np.testing.assert_array_equal(remapped[0], [[0, 10, 255], [255, 3, 255]])
    assert remap_ignored(masks[1], (255,)) is masks[1]  # nothing to change: no copy
    check_ignore_indices((11, 255), 11, [f"c{i}" for i in range(11)])
    with pytest.raises(BadInputError, match=r"--ignore-index 3 is also class id 3 \('c3'\)"):
        check_ignore_indices((3,), 11, [f"c{i}" for i in range(11)])


def _median_frequency_reference(masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    """SegNet's recipe spelled out per class with Python loops over the masks."""
    freqs = {}
    for c in range(num_classes):
        class_pixels = sum(int((m == c).sum()) for m in masks)
        image_pixels = sum(int((m < num_classes).sum()) for m in masks if (m == c).any())
        if class_pixels:
            freqs[c] = class_pixels / image_pixels
    median = float(np.median(list(freqs.values())))
    return np.array([median / freqs[c] if c in freqs else 1.0 for c in range(num_classes)])


def test_median_frequency_weights_match_a_reference() -> None:
    rng = np.random.default_rng(3)
    masks = [rng.choice([0, 0, 0, 1, 2, 255], size=(9, 7)).astype(np.uint8) for _ in range(5)]
    masks.append(np.full((4, 4), 3, np.uint8))  # class 3 only in one small mask
    weights = median_frequency_weights(masks, 5)  # class 4: never present -> 1
    np.testing.assert_allclose(weights, _median_frequency_reference(masks, 5), rtol=1e-6)
    assert weights[0] < weights[1] and weights[4] == 1.0
    pixels, _ = class_pixel_counts(masks, 5)
    assert pixels.sum() == sum(int((m != 255).sum()) for m in masks)  # ignored: not counted


def test_class_weights_parse_and_refuse_the_wrong_count() -> None:
    masks = [np.array([[0, 1, 1, 1]], np.uint8)]
    assert parse_class_weights("none", 2, masks, ["a", "b"]) is None
    np.testing.assert_allclose(parse_class_weights("auto", 2, masks, ["a", "b"]), [2.0, 2 / 3])
    np.testing.assert_allclose(parse_class_weights("1,0.5", 2, masks, ["a", "b"]), [1.0, 0.5])
    with pytest.raises(BadInputError, match="gives 3 weights but the masks hold 2 classes"):
        parse_class_weights("1,2,3", 2, masks, ["a", "b"])
    with pytest.raises(BadInputError, match="expected auto, none or one number"):
        parse_class_weights("balanced", 2, masks, ["a", "b"])
