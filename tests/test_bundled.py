"""The models that ship inside the package: present, described, and runnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segen_edge import zoo
from segen_edge.bench import sample_batch
from segen_edge.evaluate import evaluate, held_out_pairs
from segen_edge.generate import Generator
from segen_edge.loading import load
from segen_edge.metadata import ModelInfo
from segen_edge.onnxmeta import read_metadata
from segen_edge.segment import Segmenter

EXPECTED = {
    "unet-pets": ("segment", {"fp32", "int8"}),
    "fcn-pets": ("segment", {"int8"}),
    "unet-membrane": ("segment", {"int8"}),
    "dcgan-mnist": ("generate", set()),
    "dcgan-fashion": ("generate", set()),
}
BUNDLED = zoo.bundled_models()


def test_every_bundled_model_is_there_and_the_wheel_stays_small() -> None:
    assert set(EXPECTED) <= set(BUNDLED)
    for name, (_, precisions) in EXPECTED.items():
        assert precisions <= set(BUNDLED[name].precisions), name
    total = sum(p.stat().st_size for ref in BUNDLED.values() for p in ref.files.values())
    # 46 MB today, 27 of them unet-pets' fp32 file (6.8M parameters over Lite0): under PyPI's
    # 100 MB per file with room for one more model
    assert total < 50e6
    assert zoo.DEFAULT_MODELS == {"segment": "unet-pets", "generate": "dcgan-fashion"}


@pytest.mark.parametrize(
    ("name", "precision"),
    [(n, p) for n, ref in sorted(BUNDLED.items()) for p in ref.precisions],
)
def test_bundled_model_metadata_and_one_run(name: str, precision: str) -> None:
    path = BUNDLED[name].files[precision]
    info = ModelInfo.from_props(read_metadata(path), source=str(path))
    assert info.name == name and info.precision == precision
    card = info.card
    for key in ("dataset", "command", "export"):
        assert card.get(key), f"{name}: card lacks {key}"
    assert precision in card["export"]["precisions"], f"{name}: no measured figures for {precision}"
    model = load(name, device="cpu", precision=precision, threads=1)
    assert model.info == info
    batch = sample_batch(model, 2)
    if isinstance(model, Segmenter):
        assert info.task == EXPECTED[name][0] == "segment"
        assert card.get("held_out"), f"{name}: card lacks the held-out stems"
        masks = model.predict_batch(batch)  # sample_batch is in the model's own layout
        assert masks.shape == (2, *info.image_size)
        assert masks.max() < len(info.class_names)
    else:
        assert isinstance(model, Generator) and EXPECTED[name][0] == "generate"
        images = model.decode(batch)
        assert images.shape == (2, *info.image_size, info.channels) and images.dtype == np.uint8
        assert images.std() > 0


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/pets")
@pytest.mark.parametrize("precision", BUNDLED["unet-pets"].precisions if "unet-pets" in BUNDLED else [])
def test_unet_pets_reproduces_its_card_on_the_held_out_split(precision: str) -> None:
    """What `segen-edge evaluate unet-pets --data ../shared/data/pets` prints is the card's mIoU."""
    model = load("unet-pets", task="segment", device="cpu", precision=precision, threads=2)
    assert isinstance(model, Segmenter)
    card = model.info.card
    pairs = held_out_pairs(str(DATA), card["held_out"])
    assert len(pairs) == len(card["held_out"]) > 100
    result = evaluate(model, pairs, card["mask_encoding"])
    assert result["miou"] == pytest.approx(card["export"]["precisions"][precision]["miou"], abs=0.005)
    assert result["miou"] >= 0.65


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/pets")
def test_model_size_images_skip_softmax_with_the_same_masks() -> None:
    """At the model's own size resize mode takes the argmax of the logits directly; the masks
    are those of the probability path (which probabilities=True always takes)."""
    seg = load("unet-pets", device="cpu", precision="fp32")
    assert isinstance(seg, Segmenter)
    images = sorted((DATA / "images").glob("*.jpg"))[:6]
    fast = seg.segment(list(images))
    full = seg.segment(list(images), probabilities=True)
    assert all(r.ids.shape == seg.info.image_size for r in fast)
    for a, b in zip(fast, full, strict=True):
        assert a.probabilities is None and b.probabilities is not None
        np.testing.assert_array_equal(a.ids, b.ids)
