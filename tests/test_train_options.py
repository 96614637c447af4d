"""train unet|fcn options of issue 18 and 16: ignore indices, splits, validity masks, class
weights, losses, blocks, encoders, crops (tile mode), and their bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")
import keras

from segen_edge.errors import BadInputError
from segen_edge.masks import find_pairs
from segen_edge.metadata import ModelInfo
from segen_edge.metrics import IGNORE_INDEX
from train.cli import main
from train.data import find_valid_masks, load_segmentation
from train.losses import SegmentationLoss
from train.models import build_encoder_unet, build_unet

TINY = [
    "--image-size",
    "32",
    "32",
    "--depth",
    "2",
    "--base-filters",
    "4",
    "--batch-size",
    "4",
    "--min-samples",
    "4",
    "--verbose",
    "0",
]


def _rare_set(root: Path, n: int = 16, size: int = 32) -> Path:
    """Background, a green field, and four red 3x3 squares alike of which one (the top one)
    is the rare class: 9 of 1024 pixels (~0.9%) an image."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2 + int(rng.integers(-4, 5))] = 1
        image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image[mask == 1] += np.array([0, 90, 0], np.uint8)
        for k in range(4):
            y, x = 1 + 7 * k + int(rng.integers(0, 3)), int(rng.integers(1, size - 4))
            image[y : y + 3, x : x + 3] = np.array([200, 60, 60]) + rng.integers(0, 30, (3, 3, 3))
            if k == 0:
                mask[y : y + 3, x : x + 3] = 2
        Image.fromarray(image).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i:02d}.png")
    return root


def _void_set(root: Path, n: int = 6, size: int = 32, void: int = 11) -> Path:
    """Index masks with classes 0..10 (0..2 drawn) and a void label `void` on a border band."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = rng.integers(0, 3, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        mask[0, :] = 10 if i == 0 else mask[0, :]  # the highest class appears once
        mask[:, -2:] = void
        image = (mask[..., None] * 20 + rng.integers(0, 20, (size, size, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"v{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"v{i}.png")
    return root


def _run(data: Path, out: Path, *extra: str, arch: str = "unet") -> int:
    return main([arch, "--data", str(data), "--out", str(out), *TINY, *extra])


def _info(run: Path) -> ModelInfo:
    return ModelInfo.from_dict(json.loads((run / "model_info.json").read_text()))


def _last_iou(run: Path, name: str) -> float:
    with (run / "log.csv").open() as log:
        return float(list(csv.DictReader(log))[-1][f"val_iou_{name}"])


# -- the target ------------------------------------------------------------------


@pytest.mark.slow
def test_auto_class_weights_lift_a_one_percent_class_off_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _rare_set(tmp_path / "rare")
    common = [
        "--data",
        str(data),
        "--image-size",
        "32",
        "32",
        "--depth",
        "2",
        "--base-filters",
        "8",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--val-count",
        "4",
        "--min-samples",
        "64",
        "--lr",
        "5e-3",
        "--class-names",
        "bg",
        "field",
        "rare",
        "--max-zoom",
        "1",
        "--jitter",
        "0",
        "--patience",
        "0",
        "--bn-images",
        "12",
        "--verbose",
        "0",
    ]
    runs = {}
    for weights in ("none", "auto"):
        runs[weights] = tmp_path / weights
        assert main(["unet", *common, "--class-weights", weights, "--out", str(runs[weights])]) == 0
    out = capsys.readouterr().out
    plain, balanced = _info(runs["none"]).card, _info(runs["auto"]).card
    assert plain["val_metrics"]["iou"]["rare"] == 0.0 and _last_iou(runs["none"], "rare") == 0.0
    assert balanced["val_metrics"]["iou"]["rare"] > 0.0 and _last_iou(runs["auto"], "rare") > 0.0
    assert plain["class_weights"] is None and balanced["class_weights_from"] == "auto"
    assert balanced["class_weights"][2] > 10 * balanced["class_weights"][0]  # ~1% of pixels
    assert "warning: class 'rare' has had IoU 0" in out  # the none run's log said so
    assert "IoU bg " in out and "class weights: bg 1" in out


# -- loss --------------------------------------------------------------------------------


def _numpy_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    keep = labels != IGNORE_INDEX
    picked = np.take_along_axis(log_p, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    w = weights[np.where(keep, labels, 0)] * keep
    return float(-(picked * w).sum() / w.sum())


def test_losses_skip_ignored_pixels_and_weigh_classes() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 5)).astype(np.int32)
    labels[0, 0] = IGNORE_INDEX
    weights = np.array([1.0, 3.0, 0.5], np.float32)
    ce = SegmentationLoss(3, "ce", weights.tolist())
    value = float(keras.ops.convert_to_numpy(ce(labels, logits)))
    assert value == pytest.approx(_numpy_ce(logits, labels, weights), rel=1e-5)
    changed = logits.copy()
    changed[0, 0] = rng.normal(size=(5, 3)) * 10  # only ignored pixels change
    for kind in ("ce", "dice", "ce+dice", "focal"):
        loss = SegmentationLoss(3, kind)
        a = float(keras.ops.convert_to_numpy(loss(labels, logits)))
        b = float(keras.ops.convert_to_numpy(loss(labels, changed)))
        assert a == pytest.approx(b, rel=1e-6), kind
    focal = float(keras.ops.convert_to_numpy(SegmentationLoss(3, "focal")(labels, logits)))
    plain = float(keras.ops.convert_to_numpy(SegmentationLoss(3, "ce")(labels, logits)))
    assert 0 < focal < plain
    perfect = np.where(
        np.eye(3, dtype=bool)[np.where(labels == IGNORE_INDEX, 0, labels)], 20.0, -20.0
    ).astype(np.float32)
    dice = float(keras.ops.convert_to_numpy(SegmentationLoss(3, "dice")(labels, perfect)))
    assert dice == pytest.approx(0.0, abs=1e-4)
    restored = SegmentationLoss.from_config(ce.get_config())
    assert restored.class_weights == pytest.approx(weights.tolist()) and restored.kind == "ce"


# -- labels as data sets ship them -------------------------------------------------------


@pytest.mark.slow
def test_void_label_with_ignore_index_val_and_test_lists(tmp_path: Path) -> None:
    data = _void_set(tmp_path / "void")
    names = [f"c{i}" for i in range(11)]
    (tmp_path / "val.txt").write_text("v1\nv2.png\n\n# comment\n")
    (tmp_path / "test.txt").write_text("v5\n")
    run = tmp_path / "run"
    extra = [
        "--epochs",
        "1",
        "--mask-encoding",
        "index",
        "--ignore-index",
        "11",
        "--class-names",
        *names,
        "--val-list",
        str(tmp_path / "val.txt"),
        "--test-list",
        str(tmp_path / "test.txt"),
        "--loss",
        "ce+dice",
        "--block",
        "residual",
    ]
    assert _run(data, run, *extra) == 0
    info = _info(run)
    card = info.card
    assert info.class_names == tuple(names) and card["ignore_index"] == [11]
    assert card["held_out"] == ["v1", "v2"] and card["test"] == ["v5"]
    assert card["split"] == "val-list" and card["train_count"] == 3
    assert card["test_metrics"]["images"] == 1 and card["loss"] == "ce+dice"
    assert card["block"] == "residual" and card["augment"]["hflip"] is True
    # the void pixels are neither scored nor a class: 32x2 of each 32x32 mask left out
    assert card["val_metrics"]["pixels"] == 2 * 32 * 30
    assert (info.mode, info.stride) == ("resize", 4)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert any(layer.name.endswith("_add") for layer in model.layers)  # residual blocks


def test_validity_masks_make_outside_pixels_ignored(tmp_path: Path) -> None:
    data = _void_set(tmp_path / "void", n=2)
    fov = tmp_path / "fov"
    fov.mkdir()
    inside = np.zeros((32, 32), np.uint8)
    inside[4:28, 4:28] = 255
    for stem in ("v0", "v1"):
        Image.fromarray(inside).save(fov / f"{stem}_mask.gif")
    pairs = find_pairs(data)
    valid = find_valid_masks(fov, [p.stem for p in pairs])
    arrays = load_segmentation(pairs, (32, 32), 3, "index", (11,), valid)
    for mask in arrays.full_masks:
        assert (mask[inside == 0] == IGNORE_INDEX).all()
        assert (mask[inside > 0] < 11).all()
    with pytest.raises(BadInputError, match=r"no mask for 1 of 3 images \(e.g. 'v9'\)"):
        find_valid_masks(fov, ["v0", "v1", "v9"])


# -- models ------------------------------------------------------------------------------


@pytest.mark.slow
def test_mobilenetv2_encoder_builds_trains_and_records_its_preprocessing(tmp_path: Path) -> None:
    model = build_encoder_unet((32, 32), 3, "mobilenetv2", None, base_filters=4)
    assert model.output_shape == (None, 32, 32, 3)
    # eager: tracing this graph for fit takes over a minute on 2 cores
    model.compile(optimizer="adam", loss=SegmentationLoss(3), run_eagerly=True)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    y = np.zeros((2, 32, 32), np.int32)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    data = _void_set(tmp_path / "void", n=4)
    run = tmp_path / "enc"
    assert (
        _run(
            data,
            run,
            "--epochs",
            "0",
            "--val-count",
            "1",
            "--ignore-index",
            "11",
            "--encoder",
            "mobilenetv2",
            "--encoder-weights",
            "none",
        )
        == 0
    )
    info = _info(run)  # --epochs 0: the run's metadata, without fit's graph trace
    assert info.arch == "unet-mobilenetv2" and info.card["encoder"] == "mobilenetv2"
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    pixels = np.array([[[[0, 255, 127.5]]]])
    np.testing.assert_allclose(
        info.preprocessing.to_model(pixels.astype(np.uint8)),
        np.array([[[[-1.0, 1.0, 127 / 127.5 - 1]]]]),
        atol=1e-6,
    )
    assert info.stride == 32


@pytest.mark.slow
def test_crop_training_writes_tile_mode(tmp_path: Path) -> None:
    data = _void_set(tmp_path / "void", n=4, size=48)
    run = tmp_path / "crop"
    assert (
        _run(
            data,
            run,
            "--epochs",
            "1",
            "--val-count",
            "1",
            "--ignore-index",
            "11",
            "--crop",
            "32",
            "32",
            "--saturation",
            "0.2",
        )
        == 0
    )
    info = _info(run)
    assert (info.mode, info.tile_size, info.overlap, info.stride) == ("tile", (32, 32), 0.25, 4)
    assert info.image_size == (32, 32) and info.card["crop"] == [32, 32]
    assert info.card["augment"]["saturation"] == 0.2
    assert info.card["val_metrics"]["pixels"] == 48 * 46  # whole 48x48 image, void left out
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.input_shape == (None, None, None, 3)  # runs on any multiple of the stride
    assert build_unet((32, 32), 2, depth=2, base_filters=4).input_shape == (None, 32, 32, 3)


# -- bad input: one line, exit 1, before training ----------------------------------------


def _refused(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_bad_options_are_one_line_errors_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _void_set(tmp_path / "void", n=4)
    run = tmp_path / "r"
    base = ["--epochs", "1", "--mask-encoding", "index"]
    _refused(
        capsys,
        _run(data, run, *base, "--loss", "hinge"),
        "--loss 'hinge' is unknown",
        "ce, dice, ce+dice, focal",
    )
    _refused(
        capsys,
        _run(data, run, *base, "--ignore-index", "11", "--ignore-index", "2"),
        "--ignore-index 2 is also class id 2",
    )
    _refused(
        capsys,
        _run(data, run, *base, "--class-names", *[f"c{i}" for i in range(11)]),
        "gives 11 names but the masks hold 12 classes",
        "--ignore-index",
    )
    _refused(
        capsys,
        _run(data, run, *base, "--ignore-index", "11", "--class-weights", "1,2,3"),
        "gives 3 weights but the masks hold 11 classes",
    )
    (tmp_path / "val.txt").write_text("v1\nnot-there\n")
    _refused(
        capsys,
        _run(data, run, *base, "--val-list", str(tmp_path / "val.txt")),
        "1 of its 2 stems are not image/mask pairs",
        "'not-there'",
    )
    _refused(
        capsys,
        _run(
            data,
            run,
            *base,
            "--encoder",
            "mobilenetv2",
            "--encoder-weights",
            str(tmp_path / "missing.weights.h5"),
        ),
        "no such file",
    )
    _refused(capsys, _run(data, run, *base, "--encoder", "vgg99"), "--encoder 'vgg99' is unknown")
    _refused(
        capsys,
        _run(data, run, *base, "--encoder-weights", "w.pth"),
        "--encoder-weights needs an --encoder (mobilenetv2, efficientnetb0, resnet50, efficientnetlite0)",
    )
    _refused(capsys, _run(data, run, *base, "--block", "dense"), "--block 'dense' is unknown")
    _refused(capsys, _run(data, run, *base, "--crop", "64", "64"), "smaller than --crop 64 64")
    _refused(capsys, _run(data, run, *base, "--ema", "1.0"), "--ema 1.0: expected a momentum in [0, 1)")
    _refused(capsys, _run(data, run, *base, "--elastic", "-1"), "--elastic -1.0: expected a displacement")
    assert not (run / "model.keras").exists() and not (run / "log.csv").exists()


@pytest.mark.slow
def test_weights_of_another_encoder_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenetv2.weights.h5"
    other.save_weights(path)
    data = _void_set(tmp_path / "void", n=4)
    code = _run(
        data,
        tmp_path / "r",
        "--epochs",
        "1",
        "--ignore-index",
        "11",
        "--encoder",
        "efficientnetb0",
        "--encoder-weights",
        str(path),
    )
    _refused(capsys, code, "not weights of the efficientnetb0 encoder")


@pytest.mark.slow
def test_init_from_starts_at_a_trained_models_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _void_set(tmp_path / "void", n=4)
    first = tmp_path / "first"
    assert _run(data, first, "--epochs", "1", "--val-count", "1", "--ignore-index", "11") == 0
    trained = keras.saving.load_model(first / "model.keras", compile=False)
    second = tmp_path / "second"
    code = _run(
        data,
        second,
        "--epochs",
        "1",
        "--val-count",
        "1",
        "--ignore-index",
        "11",
        "--init-from",
        str(first / "model.keras"),
        "--lr",
        "1e-9",  # so the one epoch leaves the weights where they started
    )
    assert code == 0
    tuned = keras.saving.load_model(second / "model.keras", compile=False)
    kernel = "enc0_conv1"
    assert np.allclose(
        tuned.get_layer(kernel).get_weights()[0], trained.get_layer(kernel).get_weights()[0], atol=1e-6
    )
    assert _info(second).card["init_from"] == str(first / "model.keras")
    capsys.readouterr()
    # another architecture, and a missing file: one line each, before training
    _refused(
        capsys,
        _run(
            data,
            tmp_path / "wide",
            "--epochs",
            "1",
            "--base-filters",
            "8",
            "--init-from",
            str(first / "model.keras"),
        ),
        "not weights of this architecture",
    )
    _refused(
        capsys, _run(data, tmp_path / "none", "--init-from", str(tmp_path / "nope.keras")), "no such file"
    )


@pytest.mark.slow
def test_ema_keeps_the_averaged_weights(tmp_path: Path) -> None:
    """--ema: the model validated and saved is the weights' moving average. With a momentum
    near 1 the average stays by the first step's weights, while plain training moves on."""
    data = _void_set(tmp_path / "void", n=6)
    common = ["--epochs", "1", "--val-count", "1", "--ignore-index", "11", "--lr", "2e-2"]
    first = tmp_path / "first"
    assert _run(data, first, *common) == 0
    start = keras.saving.load_model(first / "model.keras", compile=False)
    runs = {}
    for name, extra in (("plain", []), ("ema", ["--ema", "0.999999"])):
        runs[name] = tmp_path / name
        more = ["--init-from", str(first / "model.keras"), "--min-samples", "40", *extra]
        assert main(["unet", "--data", str(data), "--out", str(runs[name]), *TINY, *common, *more]) == 0

    def moved(run: Path) -> float:
        model = keras.saving.load_model(run / "model.keras", compile=False)
        return sum(
            float(np.abs(a - b).sum())
            for layer in ("enc0_conv1", "enc1_conv1")
            for a, b in zip(
                model.get_layer(layer).get_weights(), start.get_layer(layer).get_weights(), strict=True
            )
        )

    assert moved(runs["ema"]) < 0.5 * moved(runs["plain"])
    assert _info(runs["ema"]).card["ema"] == 0.999999 and _info(runs["plain"]).card["ema"] is None
