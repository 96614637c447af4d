"""Tiny ONNX models and odd images, built by the tests themselves (no network, no weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from segen_edge.metadata import ModelInfo, stamp_onnx  # noqa: E402

PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
CLASSES = ("red", "green", "blue")


def run_session(loaded: Any, x: np.ndarray) -> np.ndarray:
    """The first output of a LoadedSession's session for one input array."""
    return loaded.session.run(None, {loaded.input_name: x})[0]


def segmenter_info(**changes: object) -> ModelInfo:
    info = ModelInfo(
        task="segment",
        arch="tiny",
        name="tiny-seg",
        image_size=(16, 16),
        class_names=CLASSES,
        palette=PALETTE,
        card={"dataset": "synthetic"},
    )
    return info.replace(**changes)


def generator_info(**changes: object) -> ModelInfo:
    info = ModelInfo(
        task="generate",
        arch="tiny",
        name="tiny-gen",
        image_size=(8, 8),
        channels=1,
        latent_size=4,
        pixel_scale=1 / 127.5,
        pixel_offset=-1.0,
    )
    return info.replace(**changes)


def _save(model: onnx.ModelProto, path: Path, info: ModelInfo | None) -> Path:
    model.ir_version = 8
    if info is not None:
        stamp_onnx(model, info)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_segmenter(path: Path, info: ModelInfo | None = None, layout: str = "NHWC") -> Path:
    """Per-pixel logits = the pixel's own channels: class = its strongest colour channel.

    So a red image is class 0 everywhere, a green one class 1: outputs are predictable.
    """
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    if layout == "NHWC":
        x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "H", "W", 3])
        nodes = [helper.make_node("MatMul", ["image", "w"], ["logits"])]
    else:
        x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
        nodes = [
            helper.make_node("Transpose", ["image"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["t", "w"], ["m"]),
            helper.make_node("Transpose", ["m"], ["logits"], perm=[0, 3, 1, 2]),
        ]
    graph = helper.make_graph(nodes, "tiny_segmenter", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, path, info)


def make_generator(path: Path, info: ModelInfo | None = None) -> Path:
    """latents (N, 4) -> tanh(latents @ W) reshaped to (N, 8, 8, 1)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 64)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 8, 8, 1], dtype=np.int64), "shape")
    x = helper.make_tensor_value_info("latents", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 8, 8, 1])
    nodes = [
        helper.make_node("MatMul", ["latents", "w"], ["m"]),
        helper.make_node("Tanh", ["m"], ["t"]),
        helper.make_node("Reshape", ["t", "shape"], ["images"]),
    ]
    graph = helper.make_graph(nodes, "tiny_generator", [x], [y], [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, path, info)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-seg in fp32 and 'int8' (same graph, int8 in the metadata), tiny-gen, bare files."""
    folder = tmp_path_factory.mktemp("models")
    make_segmenter(folder / "tiny-seg-fp32.onnx", segmenter_info())
    make_segmenter(folder / "tiny-seg-int8.onnx", segmenter_info(precision="int8"))
    make_segmenter(folder / "tiny-nchw.onnx", segmenter_info(layout="NCHW"), layout="NCHW")
    make_generator(folder / "tiny-gen-fp32.onnx", generator_info())
    make_segmenter(folder / "bare-seg.onnx", None)
    make_generator(folder / "bare-gen.onnx", None)
    return folder


@pytest.fixture(scope="session")
def seg_model(models_dir: Path) -> Path:
    return models_dir / "tiny-seg-fp32.onnx"


@pytest.fixture(scope="session")
def gen_model(models_dir: Path) -> Path:
    return models_dir / "tiny-gen-fp32.onnx"


def solid(path: Path, colour: tuple[int, ...], size: tuple[int, int] = (20, 30), mode: str = "RGB") -> Path:
    """A one-colour image of (height, width) `size`, saved in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size[1], size[0]), colour).save(path)
    return path


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    """A folder of red, green and blue images of different sizes and formats."""
    folder = tmp_path / "photos"
    solid(folder / "red.png", (255, 0, 0), (20, 30))
    solid(folder / "green.jpg", (0, 200, 0), (17, 9))
    solid(folder / "blue.bmp", (0, 0, 250), (5, 40))
    return folder


@pytest.fixture(autouse=True)
def _optimized_model_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep onnxruntime's optimized graphs out of the user's ~/.cache during tests."""
    folder = tmp_path_factory.getbasetemp() / "ort-cache"
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(folder))
    return folder
