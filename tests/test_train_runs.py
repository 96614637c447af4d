"""train.data and train.cli: splits, paired augmentation, IDX files, and whole tiny runs."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

from segen_edge.errors import BadInputError
from segen_edge.images import preprocess
from segen_edge.masks import Pair, find_pairs
from segen_edge.metadata import ModelInfo
from train.cli import main
from train.data import (
    Augment,
    SegmentationBatches,
    fit_images,
    load_gan_data,
    load_segmentation,
    read_idx,
    split_pairs,
)

pytestmark = pytest.mark.slow  # builds and trains Keras models


def _pets(root: Path, n: int = 8, size: int = 32) -> Path:
    """A tiny Oxford-pets-style folder: a bright square (pet) on dark ground, border ring."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "trimaps").mkdir()
    for i in range(n):
        top, left = rng.integers(2, size // 2, 2)
        side = int(rng.integers(8, size // 2))
        trimap = np.full((size, size), 2, np.uint8)
        trimap[top - 1 : top + side + 1, left - 1 : left + side + 1] = 3
        trimap[top : top + side, left : left + side] = 1
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        image[trimap == 1] += 180
        Image.fromarray(image).save(root / "images" / f"pet_{i}.png")
        Image.fromarray(trimap).save(root / "trimaps" / f"pet_{i}.png")
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _mnist(root: Path, n: int = 60) -> Path:
    root.mkdir(parents=True)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):  # a bar whose position says the class
        images[i, 4:24, 2 + 2 * label : 5 + 2 * label] = 255
    for prefix, count in (("train", n), ("t10k", n // 2)):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", images[:count])
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels[:count])
    return root


def test_split_is_seeded_and_disjoint() -> None:
    pairs = [Pair(f"s{i}", Path(f"s{i}.png"), Path(f"m{i}.png")) for i in range(10)]
    train, val = split_pairs(pairs, seed=4, val_fraction=0.2)
    assert len(val) == 2 and len(train) == 8
    assert not {p.stem for p in train} & {p.stem for p in val}
    assert split_pairs(list(reversed(pairs)), seed=4)[1] == val  # order of input irrelevant
    assert len(split_pairs(pairs, seed=4, val_count=5)[1]) == 5


def test_split_seed_holds_out_the_same_images_across_seeds(tmp_path: Path) -> None:
    from train.cli import build_parser
    from train.segment import split_data

    pairs = [Pair(f"s{i:02d}", Path(f"s{i}.png"), Path(f"m{i}.png")) for i in range(30)]

    def held_out(*flags: str) -> list[str]:
        args = build_parser().parse_args(["unet", "--data", str(tmp_path), "--val-count", "5", *flags])
        return [p.stem for p in split_data(args, pairs)[1]]

    seed0 = held_out("--seed", "0")
    assert held_out("--seed", "1") != seed0  # the split follows --seed ...
    assert held_out("--seed", "1", "--split-seed", "0") == seed0  # ... unless pinned
    assert held_out("--seed", "0", "--split-seed", "1") == held_out("--seed", "1")


def test_batches_scale_like_preprocess_and_augment_pairs(tmp_path: Path) -> None:
    pairs = find_pairs(_pets(tmp_path / "pets", n=4, size=40))
    arrays = load_segmentation(pairs, (32, 32), 3, "trimap")
    info = ModelInfo(
        task="segment",
        arch="unet",
        image_size=(32, 32),
        class_names=("pet", "background", "border"),
        palette=((1, 1, 1), (2, 2, 2), (3, 3, 3)),
    )
    plain = SegmentationBatches(arrays, 4, info.preprocessing, None, shuffle=False)
    x, y = plain[0]
    from segen_edge.images import load_image

    expected = preprocess(load_image(pairs[0].image).image_u8, info)
    np.testing.assert_allclose(x[0], expected, atol=1e-6)
    assert y.dtype == np.int32 and set(np.unique(y)) <= {0, 1, 2}

    # Flips and crops move image and mask together: encode the mask into the image.
    image_u8 = np.repeat((arrays.masks[0] * 100)[..., None], 3, axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        aug_image, aug_mask = Augment(vflip=True, max_zoom=1.0, jitter=0.0).apply(
            image_u8, arrays.masks[0], rng
        )
        np.testing.assert_array_equal(aug_image[..., 0], aug_mask * 100)
        aug_image, aug_mask = Augment(max_zoom=1.5).apply(image_u8, arrays.masks[0], rng)
        assert aug_image.shape == image_u8.shape and aug_mask.shape == arrays.masks[0].shape
        assert set(np.unique(aug_mask)) <= set(np.unique(arrays.masks[0]))  # nearest only


def test_quarter_turns_and_elastic_warps_move_image_and_mask_together() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 6:20] = 1
    mask[20:28, 2:10] = 2
    image = np.repeat((mask * 100)[..., None], 3, axis=-1).astype(np.uint8)
    turned = Augment(hflip=False, max_zoom=1.0, jitter=0.0, rot90=True)
    seen = set()
    for _ in range(12):
        aug_image, aug_mask = turned.apply(image, mask, rng)
        np.testing.assert_array_equal(aug_image[..., 0], aug_mask * 100)
        seen.add(next(k for k in range(4) if np.array_equal(np.rot90(mask, k), aug_mask)))
    assert seen == {0, 1, 2, 3}
    wide = np.zeros((16, 32), np.uint8)
    wide[:, :4] = 1
    for _ in range(6):  # non-square: half turns only, the shape kept
        _, aug_mask = turned.apply(np.repeat(wide[..., None], 3, -1), wide, rng)
        assert aug_mask.shape == wide.shape
    warped = Augment(hflip=False, max_zoom=1.0, jitter=0.0, elastic=3.0)
    aug_image, aug_mask = warped.apply(image, mask, rng)
    assert not np.array_equal(aug_mask, mask)  # moved
    assert set(np.unique(aug_mask)) <= {0, 1, 2}  # labels resampled by nearest, never blended
    inside = aug_mask == 2  # the image follows the mask, away from the blended edges
    assert abs(float(aug_image[..., 0][inside].mean()) - 200) < 25
    assert abs(float(np.mean(aug_mask == 2)) - float(np.mean(mask == 2))) < 0.03


def test_idx_reader_and_mnist_padding(tmp_path: Path) -> None:
    root = _mnist(tmp_path / "mnist", n=20)
    images = read_idx(root / "train-images-idx3-ubyte.gz")
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8
    data = load_gan_data(root, (32, 32), 1)
    assert data.images_u8.shape == (20, 32, 32, 1) and data.labels is not None
    np.testing.assert_array_equal(data.images_u8[:, 2:30, 2:30, 0], images)
    assert fit_images(np.zeros((1, 10, 10, 1), np.uint8), (32, 32)).shape == (1, 32, 32, 1)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad.gz")


def test_unet_run_dir_and_resume(tmp_path: Path) -> None:
    data = _pets(tmp_path / "pets")
    run = tmp_path / "run"
    args = [
        "unet",
        "--data",
        str(data),
        "--image-size",
        "32",
        "32",
        "--batch-size",
        "4",
        "--base-filters",
        "8",
        "--depth",
        "2",
        "--val-count",
        "2",
        "--min-samples",
        "8",
        "--out",
        str(run),
        "--name",
        "unet-tiny",
        "--verbose",
        "0",
    ]
    assert main([*args, "--epochs", "1"]) == 0
    for name in ("model.keras", "model_info.json", "log.csv", "state.json"):
        assert (run / name).is_file(), name
    raw = json.loads((run / "model_info.json").read_text())
    info = ModelInfo.from_dict(raw)
    assert (info.task, info.arch, info.name, info.image_size) == ("segment", "unet", "unet-tiny", (32, 32))
    assert info.class_names == ("pet", "background", "border") and len(info.palette) == 3
    card = info.card
    assert len(card["held_out"]) == 2 and card["mask_encoding"] == "trimap"
    assert card["seed"] == 0 and card["epochs_run"] == 1 and card["params"] > 0
    assert 0 <= card["val_metrics"]["miou"] <= 1 and "border" in card["val_metrics"]["iou"]
    assert card["command"].startswith("python -m train unet --data")
    assert "val_miou" in (run / "log.csv").read_text().splitlines()[0]
    assert main([*args, "--epochs", "1"]) == 1  # would overwrite: refused
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    resumed = json.loads((run / "model_info.json").read_text())
    assert resumed["card"]["epochs_run"] == 2 and len(resumed["card"]["commands"]) == 2
    assert resumed["card"]["held_out"] == card["held_out"]
    assert len((run / "log.csv").read_text().splitlines()) == 3


def test_fcn_run(tmp_path: Path) -> None:
    data = _pets(tmp_path / "pets", n=5)
    run = tmp_path / "fcn"
    assert (
        main(
            [
                "fcn",
                "--data",
                str(data),
                "--image-size",
                "32",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--base-filters",
                "4",
                "--variant",
                "32s",
                "--val-count",
                "1",
                "--min-samples",
                "4",
                "--out",
                str(run),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    assert ModelInfo.from_dict(json.loads((run / "model_info.json").read_text())).arch == "fcn32s"


def test_dcgan_run_and_quality_score(tmp_path: Path) -> None:
    from train.quality import QualityScorer

    data = _mnist(tmp_path / "mnist")
    run = tmp_path / "gan"
    args = [
        "dcgan",
        "--data",
        str(data),
        "--batch-size",
        "16",
        "--latent-size",
        "8",
        "--codes",
        "4",
        "--filters",
        "8",
        "--d-filters",
        "8",
        "--samples",
        "20",
        "--out",
        str(run),
        "--verbose",
        "0",
    ]
    assert main([*args, "--epochs", "1"]) == 0
    for name in (
        "generator.keras",
        "discriminator.keras",
        "model_info.json",
        "log.csv",
        "samples/epoch-001.png",
        "classifier.keras",
    ):
        assert (run / name).is_file(), name
    info = ModelInfo.from_dict(json.loads((run / "model_info.json").read_text()))
    assert (info.task, info.arch, info.latent_size, info.channels) == ("generate", "dcgan", 8, 1)
    assert info.pixel_scale == pytest.approx(1 / 127.5) and info.pixel_offset == -1.0
    quality = info.card["quality"]
    assert {
        "confident_fraction",
        "min_class_coverage",
        "frechet_distance",
        "frechet_floor_real_vs_real",
        "class_coverage",
    } <= set(quality)
    assert info.card["classifier_cache"] == str(run.resolve())  # where export finds it
    assert main([*args, "--epochs", "3", "--lr-decay-epochs", "2", "--resume"]) == 0
    resumed = json.loads((run / "model_info.json").read_text())["card"]
    assert resumed["epochs_run"] == 3 and len(resumed["commands"]) == 2
    assert resumed["lr_decay_epochs"] == 2
    assert resumed["categorical_code"] == 4  # the InfoGAN code survives the resume
    with (run / "log.csv").open() as log:
        rates = [float(row["lr"]) for row in csv.DictReader(log) if row.get("lr")]
    assert rates[-2:] == pytest.approx([2e-4 * 2 / 3, 2e-4 * 1 / 3])  # the resumed epochs
    assert (run / "samples" / "epoch-003.png").is_file()
    scorer = QualityScorer.load(run)
    real = load_gan_data(data, (32, 32), 1)
    score = scorer.score(real.images_u8[:20])  # plain uint8 arrays, as export passes them
    assert score["samples"] == 20 and 0 <= score["confident_fraction"] <= 1
    assert abs(sum(score["class_coverage"].values()) - 1) < 1e-3
    assert scorer.score(real.images_u8[:20, 2:30, 2:30, 0])["samples"] == 20  # 28x28 grey


def test_quality_classifier_cache_is_reused_until_its_recipe_changes(tmp_path: Path) -> None:
    from train.quality import CLASSIFIER_INFO, CLASSIFIER_VERSION, QualityScorer

    data = load_gan_data(_mnist(tmp_path / "mnist"), (32, 32), 1)
    cache = tmp_path / "cache"
    first = QualityScorer.load_or_train(cache, data, samples=10, epochs=1)
    assert first.info["version"] == CLASSIFIER_VERSION
    assert 0 <= first.info["blend_confident_fraction"] <= 1  # the judge's doubts, recorded
    info_path = cache / CLASSIFIER_INFO
    stamped = {**json.loads(info_path.read_text()), "created": "marker"}
    info_path.write_text(json.dumps(stamped))
    assert (
        QualityScorer.load_or_train(cache, data, samples=10, epochs=1).info["created"] == "marker"
    )  # same recipe: loaded, not retrained
    with pytest.raises(BadInputError, match=r"other settings: samples 10 \(this run: 12\)"):
        QualityScorer.load_or_train(cache, data, samples=12, epochs=1)  # shared: kept
    assert json.loads(info_path.read_text())["created"] == "marker"
    fewer = load_gan_data(tmp_path / "mnist", (32, 32), 1, limit=len(data.images_u8) - 1)
    with pytest.raises(BadInputError, match="train_count"):
        QualityScorer.load_or_train(cache, fewer, samples=10, epochs=1)
    assert QualityScorer.load_or_train(cache, data, samples=12, epochs=1, replace=True).info["samples"] == 12
    info_path.write_text(json.dumps({k: v for k, v in stamped.items() if k != "version"}))
    retrained = QualityScorer.load_or_train(cache, data, samples=10, epochs=1)
    assert retrained.info["created"] != "marker"  # an older classifier's cache is replaced
    assert json.loads(info_path.read_text())["version"] == CLASSIFIER_VERSION


def test_blend_check_counts_judges_sure_of_two_class_mixtures(tmp_path: Path) -> None:
    from train.quality import blend_confidence

    labels = np.array([0, 1] * 20)
    images = np.where(labels == 0, 0, 201).astype(np.uint8)[:, None, None, None] * np.ones(
        (1, 4, 4, 1), np.uint8
    )
    seen = []

    def by_brightness(x: np.ndarray) -> np.ndarray:  # sure of dark and bright, unsure between
        seen.append(x)
        mean = x.reshape(len(x), -1).mean(axis=1)
        return np.stack(
            [
                np.where(mean < 50, 1.0, np.where(mean > 150, 0.0, 0.5)),
                np.where(mean > 150, 1.0, np.where(mean < 50, 0.0, 0.5)),
            ],
            axis=1,
        )

    assert blend_confidence(by_brightness, images, labels) == 0.0  # a careful judge
    assert seen[0].dtype == np.uint8 and (seen[0] == 101).all()  # (0 + 201 + 1) // 2: mixtures
    assert blend_confidence(lambda x: np.tile([0.95, 0.05], (len(x), 1)), images, labels) == 1.0
    with pytest.raises(BadInputError, match="two classes"):
        blend_confidence(by_brightness, images[labels == 0], labels[labels == 0])


def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["unet", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "images/ + masks/" in err


def test_linear_decay_reaches_a_small_rate_only_in_the_last_epochs() -> None:
    from train.callbacks import linear_decay

    schedule = linear_decay(1.0, epochs=10, decay_epochs=4)
    rates = [schedule(epoch) for epoch in range(10)]
    assert rates[:6] == [1.0] * 6
    assert rates[6:] == pytest.approx([4 / 5, 3 / 5, 2 / 5, 1 / 5])  # never 0: the last epoch trains
    assert [linear_decay(0.5, 3, 0)(e) for e in range(3)] == [0.5] * 3


def test_lr_decay_longer_than_the_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dcgan", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--epochs", "2"]
    assert main([*args, "--lr-decay-epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "--lr-decay-epochs 3 with --epochs 2" in err and "up to the number of epochs" in err
    assert not (tmp_path / "r").exists()


def test_batched_prediction_returns_one_array_per_output() -> None:
    import keras

    from train.quality import _predict

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    inputs = keras.Input((2,))
    double = keras.layers.Rescaling(2.0)(inputs)
    single = keras.Model(inputs, double)
    pair = keras.Model(inputs, [double, keras.layers.Rescaling(-1.0)(inputs)])
    (only,) = _predict(single, x, batch_size=4)  # batches of 4 and 2, joined
    np.testing.assert_allclose(only, 2 * x)
    first, second = _predict(pair, x, batch_size=4)
    np.testing.assert_allclose(first, 2 * x)
    np.testing.assert_allclose(second, -x)
