"""render.py: colour mask, overlay, fractions, cutout, binary, mask image, probabilities."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from segen_edge import render
from segen_edge.errors import BadInputError

RNG = np.random.default_rng(7)
PALETTE = np.array([[255, 0, 0], [0, 200, 0], [10, 20, 250]], np.uint8)


def mask(height: int, width: int, classes: int = 3) -> np.ndarray:
    return RNG.integers(0, classes, (height, width), dtype=np.uint8)


def test_colorize_uses_the_palette():
    ids = mask(37, 53)
    rgb = render.colorize(ids, PALETTE)
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8
    for k in range(3):
        assert (rgb[ids == k] == PALETTE[k]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_overlay_follows_the_formula(alpha, channels):
    ids = mask(20, 31)
    shape = (20, 31) if channels is None else (20, 31, channels)
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    out = render.overlay(image, ids, PALETTE, alpha)
    rgb = image.reshape(20, 31, -1)[:, :, :3].astype(np.float64)
    rgb = np.broadcast_to(rgb, (20, 31, 3))
    expected = np.clip(np.rint(rgb * (1 - alpha) + PALETTE[ids] * alpha), 0, 255)
    assert out.shape == (20, 31, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= 1  # float32 vs float64 rounding
    if alpha == 0.0:
        np.testing.assert_array_equal(out, rgb.astype(np.uint8))
    if alpha == 1.0:
        np.testing.assert_array_equal(out, PALETTE[ids])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_alpha_outside_0_1(alpha):
    with pytest.raises(BadInputError, match=r"--alpha .*: expected a number in \[0, 1\]"):
        render.overlay(np.zeros((2, 2, 3), np.uint8), mask(2, 2), PALETTE, alpha)


def test_overlay_needs_the_image_of_the_mask():
    with pytest.raises(BadInputError, match="give the image the mask was made from"):
        render.overlay(np.zeros((3, 2, 3), np.uint8), mask(2, 2), PALETTE)


def test_fractions_equal_bincount():
    ids = mask(101, 77)
    ref = np.bincount(ids.ravel(), minlength=4) / ids.size
    got = render.fractions(ids, 4)
    assert got.dtype == np.float64 and got.shape == (4,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
    assert got.sum() == pytest.approx(1.0)
    with pytest.raises(BadInputError, match="class id 2 but only 2"):
        render.fractions(ids, 2)


def test_fractions_of_a_large_mask_need_no_full_size_copy():
    ids = mask(2000, 3000)
    tracemalloc.start()
    try:
        render.fractions(ids, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * ids.size / 4  # a full-size int64 copy would be 8 x the mask


def test_kept_alpha_sums_the_kept_planes_in_bands_and_saturates():
    rng = np.random.default_rng(12)
    probs = rng.integers(0, 256, (3, 37, 11), dtype=np.uint8)
    want = np.minimum(probs[0].astype(int) + probs[2], 255)
    np.testing.assert_array_equal(render.kept_alpha(probs, [0, 2], rows=5), want)
    image = rng.integers(0, 256, (37, 11, 3), dtype=np.uint8)
    rgba = render.cutout(
        image, probs.argmax(0).astype(np.uint8), [0, 2], alpha=render.kept_alpha(probs, [0, 2])
    )
    np.testing.assert_array_equal(rgba[..., 3], want)


def test_cutout_and_binary_keep_the_chosen_classes():
    ids = mask(25, 40)
    image = RNG.integers(0, 256, (25, 40, 3), dtype=np.uint8)
    rgba = render.cutout(image, ids, [0, 2])
    assert rgba.shape == (25, 40, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[:, :, :3], image)
    np.testing.assert_array_equal(rgba[:, :, 3], np.where(np.isin(ids, [0, 2]), 255, 0))
    grey = image[:, :, :1]
    np.testing.assert_array_equal(render.cutout(grey, ids, [1])[:, :, :3], np.repeat(grey, 3, axis=2))
    bw = render.binary(ids, [1])
    assert bw.dtype == np.uint8 and set(np.unique(bw)) <= {0, 255}
    np.testing.assert_array_equal(bw == 255, ids == 1)
    with pytest.raises(BadInputError, match="keep class 5"):
        render.binary(ids, [5], num_classes=3)


def test_class_indices_name_the_known_classes():
    names = ("pet", "background", "border")
    assert render.class_indices(["pet", "2"], names) == (0, 2)
    assert render.class_indices([1, "background"], names) == (1,)
    with pytest.raises(BadInputError, match="--keep dog: no such class; expected one of pet, background"):
        render.class_indices(["dog"], names)
    with pytest.raises(BadInputError, match=r"0\.\.2"):
        render.class_indices(["7"], names)
    with pytest.raises(BadInputError, match="names no class"):
        render.class_indices([], names)


def test_mask_image_is_a_palette_png_up_to_256_classes(tmp_path):
    ids = mask(9, 13)
    img = render.mask_image(ids, PALETTE)
    assert img.mode == "P"
    path = tmp_path / "m.png"
    img.save(path)
    back = Image.open(path)
    np.testing.assert_array_equal(np.asarray(back), ids)
    np.testing.assert_array_equal(np.asarray(back.convert("RGB")), PALETTE[ids])


def test_mask_image_is_16_bit_beyond_256_classes(tmp_path):
    ids = RNG.integers(0, 300, (9, 13), dtype=np.uint16)
    palette = RNG.integers(0, 256, (300, 3), dtype=np.uint8)
    img = render.mask_image(ids, palette)
    assert img.mode == "I;16"
    path = tmp_path / "m.png"
    img.save(path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)).astype(np.uint16), ids)
    np.testing.assert_array_equal(render.colorize(ids, palette), palette[ids])


def test_probabilities_round_trip_through_npz(tmp_path):
    probs = RNG.integers(0, 256, (3, 6, 5), dtype=np.uint8)
    names = ("pet", "background", "border")
    planes = render.probability_planes(probs, names)
    assert list(planes) == list(names)
    np.testing.assert_array_equal(planes["border"], probs[2])
    for compress in (True, False):
        path = tmp_path / f"p{compress}.npz"
        render.write_probabilities(path, probs, names, compress=compress)
        back, back_names = render.read_probabilities(path)
        np.testing.assert_array_equal(back, probs)
        assert back_names == names
    buf = io.BytesIO()
    render.write_probabilities(buf, probs, names)
    buf.seek(0)
    assert render.read_probabilities(buf)[1] == names
    with pytest.raises(BadInputError, match=r"expected \(2, H, W\) uint8"):
        render.probability_planes(probs, names[:2])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match=r"not a probabilities \.npz"):
        render.read_probabilities(tmp_path / "bad.npz")


def test_ids_beyond_the_palette_are_an_error():
    ids = np.full((3, 3), 3, np.uint8)
    with pytest.raises(BadInputError, match="class id 3 but only 3"):
        render.colorize(ids, PALETTE)
    with pytest.raises(BadInputError, match="class id 3"):
        render.mask_image(ids, PALETTE)


def test_renderings_of_a_large_mask_stay_in_bands():
    """No float64/intp temporaries of the mask's size: peak ~ the uint8 output + a band."""
    ids = mask(1500, 2000)
    image = RNG.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    for name, call, out_bytes in (
        ("colorize", lambda: render.colorize(ids, PALETTE), 3 * ids.size),
        ("overlay", lambda: render.overlay(image, ids, PALETTE, 0.4), 3 * ids.size),
        ("cutout", lambda: render.cutout(image, ids, [1]), 5 * ids.size),
    ):
        tracemalloc.start()
        try:
            call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # a full-size intp index copy would be 8 x size, a float32 RGB blend 12 x size
        assert peak < out_bytes + 3 * ids.size, (name, peak)
