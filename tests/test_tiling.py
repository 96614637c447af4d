"""tiling.py: resize / tile / native modes with synthetic predictors whose answers are known."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from segen_edge import resizing
from segen_edge.errors import BadInputError, ModelError
from segen_edge.images import resize_u8
from segen_edge.metadata import ModelInfo
from segen_edge.probabilities import make_predictor, reflect_index, softmax, to_probabilities
from segen_edge.resizing import LETTERBOX_FILL, iter_upsampled, letterbox, segment_native, segment_resized
from segen_edge.tiling import segment_image, segment_tiled, tile_grid, window_weights

RNG = np.random.default_rng(16)


def grey(height: int, width: int, channels: int = 1) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)


def pointwise_logits(x: np.ndarray) -> np.ndarray:
    """(N, h, w) float pixel values -> (N, 3, h, w) logits; no ties at integer pixel values."""
    v = x / 255.0 * 4.0
    return np.stack([v, np.full_like(v, 2.0), 4.0 - v], axis=1)


def pointwise(batch: np.ndarray) -> np.ndarray:
    """Each pixel's class probabilities from its own (first channel) value."""
    return softmax(pointwise_logits(batch[..., 0].astype(np.float32)))


def box_filter(batch: np.ndarray, radius: int = 2) -> np.ndarray:
    """Translation-equivariant: the pointwise classifier on the mean of a (2r+1)^2 box,
    zero-padded like a 'same' convolution (so window edges differ from the whole image)."""
    x = batch[..., 0].astype(np.float32)
    padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius)))
    acc = np.zeros_like(x)
    side = 2 * radius + 1
    for dy in range(side):
        for dx in range(side):
            acc += padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
    return softmax(pointwise_logits(acc / side**2))


def constant(probs: tuple[float, ...]):
    def predict(batch: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, np.float32)[None, :, None, None]
        return np.broadcast_to(p, (batch.shape[0], len(probs), *batch.shape[1:3])).copy()

    return predict


def expected_u8(probs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


# -- model outputs -------------------------------------------------------------------------


def test_softmax_is_stable_in_place_and_normalised():
    logits = np.array([[[[1000.0]], [[0.0]], [[-1000.0]]]], np.float32)
    out = softmax(logits)
    assert out is logits and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 0.0, 0.0], atol=1e-7)
    x = RNG.normal(size=(2, 4, 3, 5)).astype(np.float32)
    ref = np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax(x.copy()), ref, rtol=1e-5)


def test_to_probabilities_layouts_and_ids():
    nchw = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    from_nchw = to_probabilities(nchw.copy(), output="logits", layout="NCHW")
    from_nhwc = to_probabilities(nchw.transpose(0, 2, 3, 1).copy(), output="logits", layout="NHWC")
    np.testing.assert_allclose(from_nchw, from_nhwc, rtol=1e-6)
    np.testing.assert_allclose(from_nchw.sum(axis=1), 1.0, rtol=1e-6)
    probs = to_probabilities(from_nchw, output="probs", layout="NCHW")
    np.testing.assert_array_equal(probs, from_nchw)
    ids = RNG.integers(0, 3, (2, 4, 5))
    onehot = to_probabilities(ids[..., None], output="ids", layout="NHWC", num_classes=3)
    assert onehot.shape == (2, 3, 4, 5) and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot.argmax(axis=1), ids)
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)
    with pytest.raises(ModelError, match="names 4"):
        to_probabilities(nchw, num_classes=4)
    with pytest.raises(ModelError, match="class id"):
        to_probabilities(ids, output="ids", num_classes=2)


def test_make_predictor_feeds_the_model_layout_and_softmaxes():
    info = ModelInfo(
        task="segment", arch="t", image_size=(8, 8), channels=1, layout="NHWC",
        class_names=("a", "b"), palette=((0, 0, 0), (255, 255, 255)),
    )  # fmt: skip
    seen = {}

    def run(x: np.ndarray) -> np.ndarray:
        seen["x"] = x
        return np.concatenate([x, 1.0 - x], axis=-1)  # NHWC logits

    batch = grey(6, 7)[None]
    probs = make_predictor(run, info)(batch)
    np.testing.assert_allclose(seen["x"], batch / 255.0, rtol=1e-6)
    assert probs.shape == (1, 2, 6, 7)
    v = batch[0, :, :, 0] / 255.0
    np.testing.assert_allclose(probs[0, 0], 1.0 / (1.0 + np.exp((1.0 - v) - v)), rtol=1e-5)


# -- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (37, 100), (3, 1000), (64, 64), (65, 129)])
@pytest.mark.parametrize("mode", ["tile", "native", "resize"])
def test_output_shapes_for_odd_sizes(size, mode):
    image = grey(*size, channels=3)
    ids, probs = segment_image(
        image, pointwise, mode=mode, model_size=(32, 32), tile=(16, 24), stride=8, want_probs=True
    )
    assert ids.shape == size and ids.dtype == np.uint8
    assert probs is not None and probs.shape == (3, *size) and probs.dtype == np.uint8
    ids_only, none = segment_image(image, pointwise, mode=mode, model_size=(32, 32), tile=(16, 24), stride=8)
    assert none is None
    np.testing.assert_array_equal(ids_only, ids)


def test_more_than_256_classes_give_uint16_ids():
    probs = np.full(300, 0.1, np.float32)
    probs[287] = 0.9
    predict = constant(tuple(probs))
    for mode in ("tile", "resize", "native"):
        ids, _ = segment_image(grey(9, 11), predict, mode=mode, model_size=(4, 4), tile=(4, 4), stride=4)
        assert ids.dtype == np.uint16
        assert (ids == 287).all()


# -- tile mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize(("size", "tile", "overlap"), [((70, 90), (16, 16), 0.25), ((33, 20), (12, 8), 0.5)])
def test_tiled_equals_native_for_a_pointwise_predictor(blend, size, tile, overlap):
    image = grey(*size)
    tiled, tiled_p = segment_tiled(image, pointwise, tile, overlap=overlap, blend=blend, want_probs=True)
    whole = pointwise(image[None])[0]
    np.testing.assert_array_equal(tiled, whole.argmax(axis=0))
    assert tiled_p is not None
    assert np.abs(tiled_p.astype(np.int16) - expected_u8(whole)).max() <= 1
    native, _ = segment_native(image, pointwise, stride=8)
    np.testing.assert_array_equal(native, tiled)


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_blend_weights_are_normalised(blend):
    """A constant predictor must come out unchanged wherever windows overlap."""
    p = (50.2 / 255, 130.1 / 255, 74.7 / 255)  # clear of the .5 rounding boundaries
    ids, probs = segment_tiled(grey(50, 77), constant(p), (16, 16), overlap=0.5, blend=blend, want_probs=True)
    assert (ids == 1).all()
    assert probs is not None
    for k, v in enumerate(p):
        assert (probs[k] == round(v * 255)).all()


def test_window_weights_shapes():
    g = window_weights(64, "gaussian")
    assert g.dtype == np.float32 and g.max() == pytest.approx(1.0) and g.min() > 0
    np.testing.assert_allclose(g, g[::-1])
    sigma = 64 / 8
    # pixel centres at i + 0.5; the peak (pixels 31, 32, 0.5 from the centre) is scaled to 1
    expected = np.exp(-((sigma + 0.5) ** 2 - 0.5**2) / (2 * sigma**2))
    assert g[32 + int(sigma)] == pytest.approx(expected, rel=1e-5)
    lin = window_weights(8, "linear")
    np.testing.assert_allclose(lin, np.array([1, 3, 5, 7, 7, 5, 3, 1]) / 7, rtol=1e-6)
    np.testing.assert_array_equal(window_weights(5, "constant"), 1.0)


def reference_tiled(image, predict, tile, overlap, blend):
    """No bands: the whole padded image accumulated at once, weights summed explicitly."""
    grid = tile_grid(image.shape[:2], tile, overlap)
    top, _, left, _ = grid.pad
    rows = reflect_index(np.arange(grid.padded[0]) - top, image.shape[0])
    cols = reflect_index(np.arange(grid.padded[1]) - left, image.shape[1])
    padded = image[rows[:, None], cols[None, :]]
    weight = np.outer(window_weights(tile[0], blend), window_weights(tile[1], blend))
    acc = None
    norm = np.zeros(grid.padded, np.float64)
    for y in grid.ys:
        for x in grid.xs:
            p = predict(padded[None, y : y + tile[0], x : x + tile[1]])[0].astype(np.float64)
            if acc is None:
                acc = np.zeros((p.shape[0], *grid.padded))
            acc[:, y : y + tile[0], x : x + tile[1]] += p * weight
            norm[y : y + tile[0], x : x + tile[1]] += weight
    probs = (acc / norm)[:, top : top + image.shape[0], left : left + image.shape[1]]
    return probs


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "batch"),
    [
        ((100, 130), (32, 32), 0.25, 4),
        ((61, 47), (16, 24), 0.6, 3),
        ((9, 200), (16, 16), 0.0, 1),
        ((40, 9), (8, 8), 0.5, 7),
    ],
)
def test_banded_tiles_equal_a_whole_image_reference(size, tile, overlap, batch):
    image = grey(*size)
    ref = reference_tiled(image, box_filter, tile, overlap, "gaussian")
    ids, probs = segment_tiled(image, box_filter, tile, overlap=overlap, batch_size=batch, want_probs=True)
    margin = np.sort(ref, axis=0)
    clear = (margin[-1] - margin[-2]) > 1e-4  # pixels with no near tie
    np.testing.assert_array_equal(ids[clear], ref.argmax(axis=0)[clear])
    assert probs is not None
    assert np.abs(probs.astype(np.int16) - expected_u8(ref)).max() <= 1


def test_tiles_agree_with_the_whole_image_away_from_borders():
    """Translation-equivariant model: at 50% overlap the Gaussian blend hides what the
    windows get wrong at their own borders (zero padding); a constant blend does not."""
    image = grey(120, 150)
    radius = 2
    whole = box_filter(image[None], radius)[0]
    inner = (slice(None), slice(radius, -radius), slice(radius, -radius))
    _, gauss = segment_tiled(image, box_filter, (64, 64), overlap=0.5, want_probs=True)
    assert gauss is not None
    gauss_err = np.abs(gauss.astype(np.int16) - expected_u8(whole))[inner].max()
    assert gauss_err <= 1
    _, flat = segment_tiled(image, box_filter, (64, 64), overlap=0.5, blend="constant", want_probs=True)
    assert flat is not None
    assert np.abs(flat.astype(np.int16) - expected_u8(whole))[inner].max() > 5 * max(gauss_err, 1)


def test_tile_grid_covers_the_image_with_mirror_margins():
    grid = tile_grid((100, 300), (64, 64), 0.25)
    assert grid.step == (48, 48)
    top, bottom, left, right = grid.pad
    assert top == left == 8  # half the overlap
    assert grid.padded == (100 + top + bottom, 300 + left + right)
    for starts, total in ((grid.ys, grid.padded[0]), (grid.xs, grid.padded[1])):
        assert starts[0] == 0 and starts[-1] + 64 == total
        assert max(np.diff(starts)) <= 48
    small = tile_grid((5, 7), (16, 16), 0.25)
    assert small.padded == (16, 16) and small.count == 1
    assert small.pad == (5, 6, 4, 5)  # centred


def test_reflect_index_matches_numpy_and_handles_wide_pads():
    for n in (2, 3, 7):
        pad = 3 * n + 1  # wider than the image: reflected again
        ref = np.pad(np.arange(n), pad, mode="reflect")
        np.testing.assert_array_equal(reflect_index(np.arange(-pad, n + pad), n), ref)
    np.testing.assert_array_equal(reflect_index(np.arange(-4, 5), 1), 0)


def test_tile_mode_memory_is_bounded_by_a_band():
    """3000x3000 image, 3 classes: a full float32 probability array would be 108 MB."""
    size, classes = (3000, 3000), 3
    image = grey(*size)
    tracemalloc.start()
    try:
        ids, _ = segment_tiled(image, pointwise, (128, 128), overlap=0.25, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = classes * size[0] * size[1] * 4
    band = classes * (128 + 96) * (size[1] + 32) * 4
    assert peak < full / 4, (peak, full)
    assert peak < ids.nbytes + 2 * band, (peak, ids.nbytes, band)
    assert ids.shape == size


def test_resize_mode_memory_is_bounded_by_a_band():
    size = (3000, 3000)
    image = grey(*size)
    tracemalloc.start()
    try:
        ids, probs = segment_resized(image, pointwise, (64, 64), want_probs=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probs is not None
    full = 3 * size[0] * size[1] * 4
    assert peak < ids.nbytes + probs.nbytes + full / 6, (peak, full)


# -- resize mode ---------------------------------------------------------------------------


def reference_bilinear(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Straightforward float64 bilinear with half-pixel centres over whole arrays."""
    _, h, w = probs.shape

    def taps(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = taps(h, size[0])
    x0, x1, fx = taps(w, size[1])
    p = probs.astype(np.float64)
    top = p[:, y0][:, :, x0] * (1 - fx) + p[:, y0][:, :, x1] * fx
    bottom = p[:, y1][:, :, x0] * (1 - fx) + p[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


@pytest.mark.parametrize(("small", "size"), [((7, 5), (23, 41)), ((16, 16), (16, 16)), ((10, 12), (4, 30))])
def test_bilinear_upsampling_matches_references(small, size):
    probs = RNG.random((3, *small)).astype(np.float32)
    ref = reference_bilinear(probs, size)
    for band_rows in (1, 3, size[0]):
        got = np.concatenate([b for _, b in iter_upsampled(probs, size, band_rows)], axis=1)
        np.testing.assert_allclose(got, ref, atol=1e-6)
    if size[0] >= small[0] and size[1] >= small[1]:  # PIL's BILINEAR only filters when shrinking
        pil = Image.fromarray(probs[0], mode="F").resize(size[::-1], Image.Resampling.BILINEAR)
        np.testing.assert_allclose(np.asarray(pil), ref[0], atol=1e-5)


@pytest.mark.parametrize("band_rows", [1, 4, 13, 1000])
def test_resize_bands_equal_one_band(band_rows):
    image = grey(50, 37)
    full = segment_resized(image, box_filter, (12, 16), want_probs=True, band_rows=1000)
    banded = segment_resized(image, box_filter, (12, 16), want_probs=True, band_rows=band_rows)
    np.testing.assert_array_equal(banded[0], full[0])
    np.testing.assert_array_equal(banded[1], full[1])
    native = segment_native(image, box_filter, stride=8, want_probs=True, band_rows=band_rows)
    np.testing.assert_array_equal(native[0], segment_native(image, box_filter, stride=8)[0])


def test_resize_mode_upsamples_probabilities_not_ids():
    """An 80x80 ramp through an 8x8 model: the mask follows the upsampled probabilities, so
    class edges need not sit on the 10-pixel blocks of a nearest-neighbour mask."""
    ramp = np.tile(np.linspace(0, 255, 80).round().astype(np.uint8), (80, 1))
    ramp = np.ascontiguousarray(np.triu(ramp)[:, :, None])  # a diagonal edge as well
    ids, probs = segment_resized(ramp, pointwise, (8, 8), want_probs=True)
    small = pointwise(resize_u8(ramp, (8, 8))[None])[0]
    up = reference_bilinear(small, (80, 80))
    np.testing.assert_array_equal(ids, up.argmax(axis=0))
    assert probs is not None and np.abs(probs.astype(np.int16) - expected_u8(up)).max() <= 1
    blocky = np.repeat(np.repeat(small.argmax(axis=0), 10, axis=0), 10, axis=1)
    assert (ids != blocky).any()
    changes = np.flatnonzero(np.diff(ids[40].astype(int))) + 1
    assert changes.size and any(c % 10 for c in changes)


@pytest.mark.parametrize(("size", "target"), [((997, 1201, 1), (33, 20)), ((600, 4000, 3), (160, 160))])
def test_large_images_shrink_in_bands_like_pil_reducing_gap(monkeypatch, size, target):
    smooth = np.asarray(
        Image.fromarray(grey(size[0] // 10, size[1] // 10, 3)).resize(size[1::-1], Image.BICUBIC)
    )
    image = np.ascontiguousarray(smooth[:, :, : size[2]])
    pil = Image.fromarray(image[:, :, 0] if size[2] == 1 else image)
    direct = np.asarray(pil.resize(target[::-1], Image.Resampling.BILINEAR)).reshape(*target, size[2])
    np.testing.assert_array_equal(resizing.shrink_u8(image, target), direct)  # below the limit
    monkeypatch.setattr(resizing, "DIRECT_RESIZE_MAX_PIXELS", 0)
    shrunk = resizing.shrink_u8(image, target)
    gap3 = np.asarray(pil.resize(target[::-1], Image.Resampling.BILINEAR, reducing_gap=3))
    assert shrunk.shape == (*target, size[2]) and shrunk.dtype == np.uint8
    assert np.abs(shrunk.astype(int) - gap3.reshape(shrunk.shape)).max() <= 1
    assert np.abs(shrunk.astype(int) - direct).mean() < 1.5


def test_letterbox_places_and_crops_the_image():
    image = np.full((40, 100, 3), 200, np.uint8)
    boxed, box = letterbox(image, (32, 32))
    assert (box.height, box.width) == (13, 32) and box.top == 9 and box.left == 0
    assert (boxed[: box.top] == LETTERBOX_FILL).all() and (
        boxed[box.top + box.height :] == LETTERBOX_FILL
    ).all()
    assert (boxed[box.top : box.top + box.height] == 200).all()

    def dark_is_class_1(batch):
        x = batch[..., 0].astype(np.float32)
        return np.stack([(x >= 100).astype(np.float32), (x < 100).astype(np.float32)], axis=1)

    ids, _ = segment_resized(image, dark_is_class_1, (32, 32), keep_aspect=True)
    assert ids.shape == (40, 100) and (ids == 0).all()  # the bars were cropped off
    half = image.copy()
    half[:, :50] = 0
    ids, _ = segment_resized(half, dark_is_class_1, (32, 32), keep_aspect=True)
    edges = np.flatnonzero(np.diff(ids[20].astype(int)))
    assert edges.size == 1 and abs(int(edges[0]) + 1 - 50) <= 2


def test_native_pads_to_the_stride_and_crops():
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return pointwise(batch)

    image = grey(33, 70)
    ids, _ = segment_native(image, predict, stride=32)
    assert seen == [(1, 64, 96, 1)]
    np.testing.assert_array_equal(ids, pointwise(image[None])[0].argmax(axis=0))


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap": 1.0}, r"--overlap 1.0: expected a fraction in \[0, 1\), e.g. 0.25"),
        ({"overlap": -0.1}, r"--overlap -0.1"),
        ({"blend": "cosine"}, r"--blend cosine: expected one of gaussian, linear, constant"),
        ({"batch_size": 0}, r"--batch-size 0: expected a whole number from 1 to [0-9,]+ windows"),
        ({"tile": (0, 16)}, r"tile size 0x16: expected \(height, width\)"),
        ({"tile": (9000, 9000)}, r"tile size 9000x9000: .* 1..8192"),
        ({"mode": "crop"}, r"--mode crop: expected one of resize, tile, native"),
        ({"mode": "native", "stride": 0}, r"stride 0"),
        ({"mode": "resize", "model_size": None}, r"resize mode needs"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, message):
    args = {"mode": "tile", "model_size": (16, 16), "tile": (16, 16)} | kwargs
    with pytest.raises(BadInputError, match=message):
        segment_image(grey(20, 20), pointwise, **args)


def test_bad_images_and_predictors():
    with pytest.raises(BadInputError, match="uint8"):
        segment_image(np.zeros((4, 4), np.float32), pointwise, mode="tile", tile=(4, 4))
    with pytest.raises(BadInputError, match="shape"):
        segment_image(np.zeros((0, 4), np.uint8), pointwise, mode="tile", tile=(4, 4))

    def wrong(batch):
        return np.zeros((batch.shape[0], 2, 3, 3), np.float32)

    with pytest.raises(ModelError, match="expected"):
        segment_image(grey(8, 8), wrong, mode="tile", tile=(4, 4))
