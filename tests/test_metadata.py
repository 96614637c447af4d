"""ModelInfo: the segen.* schema, written and read back, with errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import generator_info, make_segmenter, segmenter_info

from segen_edge.errors import MetadataError
from segen_edge.metadata import ModelInfo, stamp_onnx
from segen_edge.onnxmeta import read_metadata


def test_props_round_trip_as_json() -> None:
    info = segmenter_info(card={"metrics": {"miou": 0.7}, "held_out": ["a", "b"]})
    props = info.to_props()
    assert all(k.startswith("segen.") for k in props)
    assert json.loads(props["segen.image_size"]) == [16, 16]
    assert ModelInfo.from_props(props) == info
    gen = generator_info()
    assert ModelInfo.from_props(gen.to_props()) == gen


def test_onnx_file_round_trip_keeps_foreign_keys(tmp_path: Path) -> None:
    path = make_segmenter(tmp_path / "m.onnx", segmenter_info())
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "someone"
    stamp_onnx(model, segmenter_info(precision="int8"))
    onnx.save(model, str(path))
    props = read_metadata(path)
    assert props["author"] == "someone"
    assert ModelInfo.from_props(props).precision == "int8"
    assert props == {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task", '"classify"', "segen.task"),
        ("image_size", "[16]", "segen.image_size"),
        ("image_size", '"16x16"', "segen.image_size"),
        ("palette", "[[0, 0]]", "segen.palette"),
        ("class_names", "[1, 2]", "segen.class_names"),
        ("pixel_scale", "0", "segen.pixel_scale"),
        ("precision", '"int4"', "segen.precision"),
        ("channels", "4", "segen.channels"),
        ("latent_size", '"big"', "segen.latent_size"),
    ],
)
def test_malformed_key_is_named(key: str, value: str, message: str) -> None:
    base = generator_info() if key == "latent_size" else segmenter_info()
    props = base.to_props()
    props["segen." + key] = value
    with pytest.raises(MetadataError, match=message.replace(".", r"\.")):
        ModelInfo.from_props(props, source="m.onnx")


def test_not_json_is_named() -> None:
    props = segmenter_info().to_props()
    props["segen.palette"] = "[[1, 2, 3],"
    with pytest.raises(MetadataError, match=r"segen\.palette.*not valid JSON"):
        ModelInfo.from_props(props)


def test_missing_keys_are_listed() -> None:
    props = {"segen.arch": '"unet"'}
    with pytest.raises(MetadataError, match=r"segen\.task, segen\.image_size"):
        ModelInfo.from_props(props, source="m.onnx")
    with pytest.raises(MetadataError, match="no segen"):
        ModelInfo.from_props({"other": "x"})


def test_segmenter_needs_a_colour_per_class() -> None:
    with pytest.raises(MetadataError, match="3 colours"):
        segmenter_info(palette=((0, 0, 0),))
