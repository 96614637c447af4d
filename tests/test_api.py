"""The public Python API: load, Segmenter.segment, Segmentation, Generator, the batch jobs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, PALETTE
from PIL import Image
from typer.testing import CliRunner

import segen_edge
from segen_edge import cli
from segen_edge.errors import BadInputError, ModelError


@pytest.fixture()
def seg(seg_model: Path) -> segen_edge.Segmenter:
    return segen_edge.load_segmenter(seg_model, device="cpu")


def test_public_names_are_exported_and_typed() -> None:
    assert set(segen_edge.__all__) <= set(dir(segen_edge))
    for name in segen_edge.__all__:
        assert getattr(segen_edge, name) is not None
    assert (Path(segen_edge.__file__).parent / "py.typed").is_file()
    for name in ("load", "load_segmenter", "load_generator", "segment_files", "generate_files"):
        assert ">>>" in (getattr(segen_edge, name).__doc__ or ""), f"{name} has no example"


def test_load_picks_the_class_by_task_and_typed_loaders_refuse_the_other(
    seg_model: Path, gen_model: Path
) -> None:
    assert isinstance(segen_edge.load(seg_model), segen_edge.Segmenter)
    assert isinstance(segen_edge.load(gen_model), segen_edge.Generator)
    with pytest.raises(ModelError, match=r"is a generate model.*segen-edge generate"):
        segen_edge.load_segmenter(gen_model)
    with pytest.raises(ModelError, match="is a segment model"):
        segen_edge.load_generator(seg_model)


def test_load_from_bytes_gives_the_same_model(seg_model: Path) -> None:
    from_bytes = segen_edge.load_segmenter(seg_model.read_bytes())
    image = np.random.default_rng(0).integers(0, 256, (12, 9, 3)).astype(np.uint8)
    np.testing.assert_array_equal(
        from_bytes.segment(image).ids, segen_edge.load_segmenter(seg_model).segment(image).ids
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device 'tpu': expected one of"),
        ({"precision": "int4"}, "precision 'int4': expected one of"),
        ({"threads": 0}, "--threads 0: expected a whole number from 1 to"),
        ({"threads": 100_000}, "--threads 100000: expected a whole number from 1 to"),
    ],
)
def test_load_checks_its_arguments_once(seg_model: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        segen_edge.load(seg_model, **kwargs)  # type: ignore[arg-type]


def test_unknown_override_is_a_type_error(seg_model: Path) -> None:
    with pytest.raises(TypeError, match="imagesize"):
        segen_edge.load(seg_model, imagesize=(3, 3))


def _reds(size: tuple[int, int]) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    image[..., 0] = 250
    return image


@pytest.mark.parametrize(
    "make",
    [
        lambda: _reds((10, 7)),  # HxWx3 uint8
        lambda: _reds((10, 7))[..., 0],  # HxW grey: class of a grey pixel is the first channel (tie -> 0)
        lambda: _reds((10, 7))[..., :1],  # HxWx1
        lambda: np.concatenate([_reds((10, 7)), np.full((10, 7, 1), 255, np.uint8)], axis=2),  # RGBA
        lambda: _reds((10, 7)).astype(np.uint16) * 257,  # uint16
        lambda: Image.fromarray(_reds((10, 7))),  # PIL RGB
        lambda: Image.fromarray(_reds((10, 7))).convert("P"),  # PIL palette
        lambda: Image.fromarray(_reds((10, 7))).convert("RGBA"),
        lambda: Image.fromarray(_reds((10, 7))[..., 0]),  # PIL L
    ],
)
def test_segment_takes_what_users_hold(seg: segen_edge.Segmenter, make: object) -> None:
    result = seg.segment(make())  # type: ignore[operator]
    assert result.size == (10, 7) and result.ids.dtype == np.uint8
    assert (result.ids == 0).all()  # red (or grey, whose first channel wins the tie)
    assert result.fractions == {"red": 1.0, "green": 0.0, "blue": 0.0}


def test_segment_a_path_and_a_list(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    Image.fromarray(_reds((5, 6))).save(tmp_path / "r.png")
    green = np.zeros((4, 9, 3), np.uint8)
    green[..., 1] = 200
    results = seg.segment([str(tmp_path / "r.png"), tmp_path / "r.png", green])
    assert [r.size for r in results] == [(5, 6), (5, 6), (4, 9)]
    assert (results[2].ids == 1).all()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), r"expected \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"),
        (np.zeros((4, 4, 3), np.float32), "expected uint8 or uint16 pixels"),
        (np.zeros((0, 4, 3), np.uint8), "expected"),
        (42, "not an image; pass a path, a PIL image or a numpy array"),
        ("missing.png", "missing.png: file not found"),
    ],
)
def test_segment_refuses_what_it_cannot_read_in_one_line(
    seg: segen_edge.Segmenter, bad: object, message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        seg.segment(bad)  # type: ignore[arg-type]


def test_segmentation_renders(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, :4, 0] = 200  # left red, right blue
    image[:, 4:, 2] = 180
    result = seg.segment(image, probabilities=True)
    assert (result.ids[:, :4] == 0).all() and (result.ids[:, 4:] == 2).all()
    palette = np.asarray(PALETTE, np.uint8)
    np.testing.assert_array_equal(result.colorize(), palette[result.ids])
    blend = np.rint(image * 0.7 + palette[result.ids] * 0.3).astype(np.uint8)
    assert np.abs(result.overlay(0.3).astype(int) - blend).max() <= 1
    cut = result.cutout("red")
    assert cut.shape == (6, 8, 4) and (cut[:, :4, 3] == 255).all() and (cut[:, 4:, 3] == 0).all()
    np.testing.assert_array_equal(cut[..., :3], image)
    assert set(np.unique(result.binary(["blue"]))) == {0, 255}
    with pytest.raises(BadInputError, match="--keep purple"):
        result.cutout("purple")
    assert result.probabilities is not None and result.probabilities.shape == (3, 6, 8)
    soft = result.cutout(["red", "green"], soft=True)  # alpha: their probability, summed
    want = np.minimum(result.probabilities[0].astype(int) + result.probabilities[1], 255)
    np.testing.assert_array_equal(soft[..., 3], want)
    np.testing.assert_array_equal(soft[..., :3], image)
    assert 0 < soft[0, 0, 3] < 255  # the model's softmax is not one-hot: soft edges indeed
    with pytest.raises(BadInputError, match="probabilities=True"):
        seg.segment(image).cutout("red", soft=True)
    saved = result.save(tmp_path / "m.png")
    with Image.open(saved) as img:
        assert img.mode == "P" and np.array_equal(np.asarray(img), result.ids)
    result.save(tmp_path / "p.npz", "prob")
    from segen_edge.render import read_probabilities

    probs, names = read_probabilities(tmp_path / "p.npz")
    assert names == CLASSES and np.array_equal(probs, result.probabilities)


def test_api_and_cli_give_the_same_masks_to_the_bit(tmp_path: Path) -> None:
    """The bundled unet-pets on a photo larger than its input, at the photo's own size."""
    rng = np.random.default_rng(3)
    photo = (rng.random((300, 451, 3)) * 60 + np.linspace(0, 190, 451)[None, :, None]).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(photo).save(tmp_path / "in" / "photo.png")
    result = CliRunner().invoke(
        cli.app,
        ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--save", "mask,overlay", "-d", "cpu"],
    )
    assert result.exit_code == 0, result.stderr
    seg = segen_edge.load_segmenter("unet-pets", device="cpu", batch_size=8)
    api = seg.segment(tmp_path / "in" / "photo.png")
    with Image.open(tmp_path / "out" / "photo.png") as mask:
        np.testing.assert_array_equal(np.asarray(mask), api.ids)
    with Image.open(tmp_path / "out" / "photo.overlay.png") as overlay:
        np.testing.assert_array_equal(np.asarray(overlay), api.overlay())
    assert api.size == (300, 451)


def test_the_library_prints_nothing(
    seg_model: Path, gen_model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    seg = segen_edge.load(seg_model)
    seg.segment(_reds((4, 4)))  # type: ignore[union-attr]
    gen = segen_edge.load_generator(gen_model)
    gen.generate(3, seed=1)
    segen_edge.load_segmenter("unet-pets").segment(_reds((20, 30)))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_model_is_shared_between_threads_and_closes(seg_model: Path) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (17, 23, 3)).astype(np.uint8) for _ in range(8)]
    with segen_edge.load_segmenter(seg_model) as seg:
        expected = [seg.segment(im).ids for im in images]
        got: dict[int, np.ndarray] = {}

        def work(i: int) -> None:
            for _ in range(5):
                got[i] = seg.segment(images[i]).ids

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, ids in got.items():
            np.testing.assert_array_equal(ids, expected[i])
    with pytest.raises(ModelError, match="closed"):
        seg.segment(images[0])


def test_generator_api(gen_model: Path, tmp_path: Path) -> None:
    gen = segen_edge.load_generator(gen_model)
    images = gen.generate(5, seed=4)
    assert isinstance(images, np.ndarray) and images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(gen.generate(5, seed=4, batch_size=2), images)  # batch size changes nothing
    assert not np.array_equal(gen.generate(5, seed=5), images)
    pils = gen.generate(2, seed=4, pil=True)
    assert isinstance(pils, list) and isinstance(pils[0], Image.Image) and pils[0].size == (8, 8)
    np.testing.assert_array_equal(np.asarray(pils[1]), images[1, :, :, 0])
    grid = gen.grid(images, columns=5, pad=1, scale=2)
    assert grid.shape == ((8 + 1) * 1 * 2 + 2, (5 * 9 + 1) * 2, 1)
    with pytest.raises(BadInputError, match="--seed -1"):
        gen.generate(2, seed=-1)
    with pytest.raises(BadInputError, match="has no categorical code"):
        gen.generate(2, seed=1, code=0)
    files = list(segen_edge.generate_files(gen, 3, tmp_path / "g", seed=4, name="t"))
    assert [f.path.name for f in files] == ["t-s4-00000.png", "t-s4-00001.png", "t-s4-00002.png"]
    with Image.open(files[2].path) as img:
        np.testing.assert_array_equal(np.asarray(img), images[2, :, :, 0])


def test_segment_files_reports_a_result_per_input(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_reds((5, 5))).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    seen: list[str] = []
    report = segen_edge.segment_files(
        seg, [folder], tmp_path / "out", save=["mask", "color"], progress=lambda r: seen.append(r.status)
    )
    assert report.counts == {"ok": 1, "skipped": 0, "failed": 1}
    assert seen == ["ok", "failed"]
    assert "b.png: not an image Pillow can read" in report.results[1].error
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "a.color.png").is_file()
    again = segen_edge.segment_files(seg, [folder], tmp_path / "out")
    assert again.counts["skipped"] == 1
