"""ONNX files made the way other tools export them, run through the API and the CLI.

Each graph is a per-pixel linear map (a 1x1 convolution), so the expected class of every
pixel is computed here in numpy from the same weights and the same normalization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import solid
from PIL import Image
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import segen_edge  # noqa: E402
from segen_edge import cli  # noqa: E402
from segen_edge.errors import SegenError  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RNG = np.random.default_rng(7)
WEIGHTS = RNG.standard_normal((4, 3)).astype(np.float32)  # 4 classes from 3 channels
BIAS = RNG.standard_normal(4).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path, producer: str) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def torchvision_style(path: Path, size: tuple[int, int] | None = None, batch: int | str = "batch") -> Path:
    """NCHW in, NCHW logits out (Conv 1x1), dynamic or fixed sizes, as torch.onnx.export."""
    h, w = size or ("height", "width")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, h, w])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, h, w])
    conv = helper.make_node("Conv", ["input", "W", "B"], ["out"])
    inits = [
        numpy_helper.from_array(WEIGHTS.reshape(4, 3, 1, 1), "W"),
        numpy_helper.from_array(BIAS, "B"),
    ]
    return _save(helper.make_graph([conv], "torch_jit", [x], [y], inits), path, "pytorch")


def keras_style(path: Path) -> Path:
    """NHWC 32x32 in, NHWC logits out, no segen metadata, as tf2onnx converts a Keras model."""
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__1", 32, 32, 3])
    y = helper.make_tensor_value_info("conv2d", TensorProto.FLOAT, ["unk__1", 32, 32, 4])
    nodes = [
        helper.make_node("MatMul", ["input_1", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["conv2d"]),
    ]
    inits = [numpy_helper.from_array(WEIGHTS.T.copy(), "W"), numpy_helper.from_array(BIAS, "B")]
    return _save(helper.make_graph(nodes, "tf2onnx", [x], [y], inits), path, "tf2onnx")


def argmax_style(path: Path) -> Path:
    """NCHW in, class ids (N, H, W) int64 out: a graph that ends in ArgMax."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "height", "width"])
    nodes = [
        helper.make_node("Conv", ["input", "W", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(WEIGHTS.reshape(4, 3, 1, 1), "W"),
        numpy_helper.from_array(BIAS, "B"),
    ]
    return _save(helper.make_graph(nodes, "torch_jit", [x], [y], inits), path, "pytorch")


def expected_ids(image_u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = (image_u8.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.argmax(x @ WEIGHTS.T + BIAS, axis=-1)


def noise(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, list(args))
    code, stderr = result.exit_code, result.stderr
    if isinstance(result.exception, SegenError):
        code, stderr = 1, stderr + f"error: {result.exception}\n"
    elif result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return code, result.stdout, stderr


NAMES = "a,b,c,d"


def test_torchvision_nchw_with_mean_std(tmp_path: Path) -> None:
    model = torchvision_style(tmp_path / "tv.onnx")
    image = noise((24, 40))
    seg = segen_edge.load_segmenter(
        model, image_size=(24, 40), mean=MEAN, std=STD, class_names=NAMES.split(",")
    )
    assert seg.info.layout == "NCHW" and seg.info.channels == 3  # read from the graph
    result = seg.segment(image)
    np.testing.assert_array_equal(result.ids, expected_ids(image, MEAN, STD))
    # the CLI, with the same description flags, writes the same class ids
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "in.png")
    code, _, stderr = run(
        "segment", str(tmp_path / "in" / "in.png"), "-m", str(model), "-o", str(tmp_path / "out"),
        "--image-size", "24", "40", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
        "--class-names", NAMES,
    )  # fmt: skip
    assert code == 0, stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "in.png")), result.ids)


def test_keras_nhwc_without_metadata_runs_on_what_its_graph_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = keras_style(tmp_path / "keras.onnx")
    seg = segen_edge.load_segmenter(model)
    assert (seg.info.layout, seg.info.image_size, seg.info.class_names) == (
        "NHWC",
        (32, 32),
        ("class0", "class1", "class2", "class3"),
    )
    assert "assumed" in caplog.text and "--mean" in caplog.text  # assumptions are said, not silent
    image = noise((32, 32), seed=1)
    np.testing.assert_array_equal(seg.segment(image).ids, expected_ids(image, (0.0,) * 3, (1.0,) * 3))
    code, stdout, stderr = run("info", str(model), "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["file"]["producer"] == "tf2onnx" and doc["file"]["inputs"][0]["shape"] == ["unk__1", 32, 32, 3]
    assert doc["segen_keys"] == [] and doc["verbs"]["segment"].startswith("ready")
    assert doc["verbs"]["generate"].startswith("no: a segment model")


def test_graph_ending_in_argmax(tmp_path: Path) -> None:
    model = argmax_style(tmp_path / "argmax.onnx")
    with pytest.raises(SegenError, match="--class-names"):
        segen_edge.load_segmenter(model, image_size=(16, 16))  # ids say no class count
    seg = segen_edge.load_segmenter(model, image_size=(16, 16), class_names=NAMES.split(","))
    assert seg.info.output == "ids"  # read from the graph's int64 output
    image = noise((16, 16), seed=2)
    result = seg.segment(image, probabilities=True)
    np.testing.assert_array_equal(result.ids, expected_ids(image, (0.0,) * 3, (1.0,) * 3))
    assert result.probabilities is not None and set(np.unique(result.probabilities)) <= {0, 255}
    code, stdout, _ = run("info", str(model))
    assert code == 0 and "outputs ids" not in stdout and "int64" in stdout


def uint8_nhwc_in_nchw_out(path: Path) -> Path:
    """uint8 NHWC pixels in (the preprocessing inside the graph: Cast, scale, Transpose),
    NCHW logits out with a dynamic size and a fixed class count, as converters make them."""
    x = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", "h", "w", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, "h", "w"])
    nodes = [
        helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W", "B"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        numpy_helper.from_array(WEIGHTS[:, :, None, None], "W"),
        numpy_helper.from_array(BIAS, "B"),
    ]
    return _save(helper.make_graph(nodes, "u8", [x], [y], inits), path, "tf2onnx")


@pytest.mark.parametrize("device", ["cpu", "openvino-runtime"])
def test_a_graph_that_takes_uint8_pixels(tmp_path: Path, device: str) -> None:
    """Fed the pixels themselves (not scaled floats cast to 0/1), its four classes found
    although its output's layout is not its input's."""
    from segen_edge import openvino_runtime

    if device == "openvino-runtime" and not openvino_runtime.available():
        pytest.skip("needs OpenVINO's runtime")
    model = uint8_nhwc_in_nchw_out(tmp_path / "u8.onnx")
    seg = segen_edge.load_segmenter(model, image_size=(16, 16), device=device)
    assert seg.info.pixel_scale == 1.0 and seg.class_names == ("class0", "class1", "class2", "class3")
    image = noise((16, 16), seed=3)
    np.testing.assert_array_equal(seg.segment(image).ids, expected_ids(image, (0.0,) * 3, (1.0,) * 3))


def one_channel(path: Path, sigmoid: bool, squeezed: bool = False) -> Path:
    """A binary model as rembg-style tools export them: NCHW in, one foreground channel out
    (a logit, or a Sigmoid's probability; (n, 1, h, w) or squeezed to (n, h, w));
    foreground where the red channel exceeds 0.5."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])
    shape = ["n", "h", "w"] if squeezed else ["n", 1, "h", "w"]
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logit"])]
    last = "logit"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [last], ["prob"]))
        last = "prob"
    nodes.append(
        helper.make_node("Squeeze", [last, "axes"], ["mask"])
        if squeezed
        else helper.make_node("Identity", [last], ["mask"])
    )
    inits = [
        numpy_helper.from_array(np.array([[[[8.0]], [[0.0]], [[0.0]]]], np.float32), "W"),
        numpy_helper.from_array(np.array([-4.0], np.float32), "B"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    return _save(helper.make_graph(nodes, "binary", [x], [y], inits), path, "pytorch")


@pytest.mark.parametrize(("sigmoid", "squeezed"), [(True, False), (False, False), (True, True)])
def test_a_one_channel_binary_model(tmp_path: Path, sigmoid: bool, squeezed: bool) -> None:
    model = one_channel(tmp_path / "binary.onnx", sigmoid, squeezed)
    seg = segen_edge.load_segmenter(model, image_size=(16, 16))
    assert seg.class_names == ("background", "foreground")
    assert seg.info.output == ("probs" if sigmoid else "logits")
    image = noise((16, 16), seed=4)
    result = seg.segment(image, probabilities=True)
    red = image[..., 0].astype(np.float32) / 255
    np.testing.assert_array_equal(result.ids, (red > 0.5).astype(np.uint8))
    assert result.probabilities is not None and result.probabilities.shape == (2, 16, 16)
    fg = 1 / (1 + np.exp(-(8 * red - 4)))
    np.testing.assert_allclose(result.probabilities[1], np.rint(fg * 255), atol=1)
    cutout = result.cutout("foreground")
    assert (cutout[..., 3] == np.where(red > 0.5, 255, 0)).all()
    named = segen_edge.load_segmenter(model, image_size=(16, 16), class_names=["sky", "person"])
    assert named.class_names == ("sky", "person")
    with pytest.raises(SegenError, match="outputs 1 classes"):
        segen_edge.load_segmenter(model, image_size=(16, 16), class_names=["a", "b", "c"])


def quarter_size_logits(path: Path) -> Path:
    """Logits at a quarter of the input's size, as SegFormer exports return them: the
    per-pixel linear map, average-pooled 4x4 with stride 4."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "h4", "w4"])
    nodes = [
        helper.make_node("Conv", ["pixel_values", "W", "B"], ["full"]),
        helper.make_node("AveragePool", ["full"], ["logits"], kernel_shape=[4, 4], strides=[4, 4]),
    ]
    inits = [numpy_helper.from_array(WEIGHTS[:, :, None, None], "W"), numpy_helper.from_array(BIAS, "B")]
    return _save(helper.make_graph(nodes, "segformer_like", [x], [y], inits), path, "pytorch")


@pytest.mark.parametrize("mode", ["resize", "tile", "native"])
def test_a_model_whose_logits_come_at_a_quarter_of_its_input(tmp_path: Path, mode: str) -> None:
    """Its probabilities are upsampled to the input in every mode (tile mode refused them:
    'expected (8, classes, 64, 64)'); far from the colour boundary each half keeps its class."""
    model = quarter_size_logits(tmp_path / "segformer.onnx")
    seg = segen_edge.load_segmenter(model, image_size=(32, 32), class_names=NAMES.split(","), mode=mode)
    colours = noise((1, 2), seed=5)[0]  # two random colours, left and right
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32], image[:, 32:] = colours[0], colours[1]
    result = seg.segment(image, probabilities=True)
    assert result.ids.shape == (48, 64) and result.probabilities is not None
    assert result.probabilities.shape == (4, 48, 64)
    left, right = (expected_ids(c[None, None], (0.0,) * 3, (1.0,) * 3)[0, 0] for c in colours)
    assert (result.ids[:, :20] == left).all() and (result.ids[:, 44:] == right).all()


def test_fixed_1x3x512x512_graph(tmp_path: Path) -> None:
    model = torchvision_style(tmp_path / "fixed.onnx", size=(512, 512), batch=1)
    seg = segen_edge.load_segmenter(model, class_names=NAMES.split(","), mean=MEAN, std=STD)
    assert seg.info.image_size == (512, 512) and seg.fixed_batch == 1
    images = [noise((512, 512), seed=s) for s in range(3)]
    results = seg.segment(images)  # fed one at a time into the batch-1 graph
    for image, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(result.ids, expected_ids(image, MEAN, STD))
    with pytest.raises(SegenError, match="native needs a graph with dynamic height and width"):
        seg.segment(images[0], mode="native")
    tiled = seg.segment(noise((700, 600)), mode="tile")  # windows of the graph's own size
    assert tiled.size == (700, 600)
    (tmp_path / "in").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "in" / "big.png")
    code, _, stderr = run(
        "segment", str(tmp_path / "in" / "big.png"), "-m", str(model), "-o", str(tmp_path / "o"),
        "--class-names", NAMES, "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
    )  # fmt: skip
    assert code == 0, stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "big.png")), results[0].ids)


def test_description_flags_exist_on_every_verb_that_opens_a_model(tmp_path: Path) -> None:
    model = torchvision_style(tmp_path / "tv.onnx")
    common = ["--image-size", "8", "8", "--layout", "NCHW", "--class-names", NAMES, "--mean", "0.5,0.5,0.5",
              "--std", "0.25,0.25,0.25"]  # fmt: skip
    code, _, stderr = run("bench", "-m", str(model), "-b", "1", "--runs", "2", "--warmup", "0", *common)
    assert code == 0, stderr
    code, stdout, stderr = run("info", str(model), *common, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["description"]["mean"] == [0.5, 0.5, 0.5]
    solid(tmp_path / "data" / "images" / "x.png", (200, 10, 10), (8, 8))
    solid(tmp_path / "data" / "masks" / "x.png", (1,), (8, 8), mode="L")
    code, stdout, stderr = run("evaluate", str(model), "--data", str(tmp_path / "data"), "--split", "all",
                               "--mask-encoding", "index", *common)  # fmt: skip
    assert code == 0, stderr
    assert "miou" in stdout


def test_layout_flag_fixes_a_graph_that_does_not_say(tmp_path: Path) -> None:
    """A graph whose input is (N, ?, ?, ?) says nothing of its layout: --layout decides."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "a", "b", "c"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "a", "b", "c"])
    path = _save(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
        tmp_path / "i.onnx",
        "x",
    )
    with pytest.raises(SegenError, match="--layout"):
        segen_edge.load_segmenter(path, image_size=(8, 8), class_names=["r", "g", "b"])
    seg = segen_edge.load_segmenter(path, image_size=(8, 8), class_names=["r", "g", "b"], layout="NHWC")
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert (seg.segment(red).ids == 0).all()


def test_a_pytorch_dcgan_generator_taking_latents_as_nz_x_1_x_1(tmp_path: Path) -> None:
    """PyTorch's DCGAN takes its latents as (N, nz, 1, 1) and returns NCHW in [-1, 1]: a
    generator (it was read as a 100x1 image segmenter), fed its latents reshaped."""
    import onnxruntime as ort

    weight = np.random.default_rng(8).standard_normal((100, 3, 8, 8)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 100, 1, 1])
    y = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, 8, 8])
    nodes = [helper.make_node("ConvTranspose", ["z", "w"], ["t"]), helper.make_node("Tanh", ["t"], ["img"])]
    graph = helper.make_graph(nodes, "netG", [x], [y], [numpy_helper.from_array(weight, "w")])
    model = _save(graph, tmp_path / "netG.onnx", "pytorch")
    gen = segen_edge.load_generator(model)
    assert gen.info.latent_size == 100
    latents = np.random.default_rng(9).standard_normal((3, 100)).astype(np.float32)
    images = gen.decode(latents)
    raw = ort.InferenceSession(str(model)).run(None, {"z": latents.reshape(3, 100, 1, 1)})[0]
    want = np.clip(np.rint((raw.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255)
    assert images.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(images.astype(np.float32), want, atol=1)
    code, _, stderr = run("generate", "-n", "2", "-m", str(model), "-o", str(tmp_path / "out"))
    assert code == 0, stderr


def test_a_generator_ending_in_a_sigmoid_makes_images_in_0_1(tmp_path: Path) -> None:
    """Its outputs are read as [0, 1] (a tanh's [-1, 1] would wash every image out)."""
    x = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 2, 2, 1])
    weight = np.random.default_rng(10).standard_normal((4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["z", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["img"]),
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([-1, 2, 2, 1]), "shape")]
    model = _save(helper.make_graph(nodes, "vae_decoder", [x], [y], inits), tmp_path / "dec.onnx", "pytorch")
    gen = segen_edge.load_generator(model)
    latents = np.random.default_rng(11).standard_normal((5, 4)).astype(np.float32)
    want = np.rint(255 / (1 + np.exp(-(latents @ weight)))).reshape(5, 2, 2, 1)
    np.testing.assert_allclose(gen.decode(latents).astype(np.float32), want, atol=1)


def test_a_model_with_two_inputs_is_refused_at_load_in_one_line(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 16, 16])
    t = helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, 16, 16])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "threshold"], ["out"])], "g", [x, t], [y])
    model = _save(graph, tmp_path / "two.onnx", "pytorch")
    with pytest.raises(SegenError, match=r"takes 2 inputs \(image, threshold\); segen-edge feeds one"):
        segen_edge.load_segmenter(model)
    for i in range(3):
        Image.fromarray(noise((16, 16), seed=i)).save(tmp_path / f"p{i}.png")
    code, _, stderr = run("segment", str(tmp_path), "-m", str(model), "-o", str(tmp_path / "out"))
    assert code == 1 and stderr.count("takes 2 inputs") == 1  # once, not once an image
