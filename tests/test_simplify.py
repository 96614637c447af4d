"""export/simplify.py: kernel == stride up-convolutions as Conv 1x1 + DepthToSpace, on
graphs built with onnx.helper and run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.simplify import simplify, upconvs_as_depth_to_space  # noqa: E402

C_IN, C_OUT = 3, 4


def _graph(nodes: list, initializers: list, output: str = "y", **kwargs) -> onnx.ModelProto:  # type: ignore[name-defined]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, C_IN, None, None])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None] * 4)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, **kwargs)


def _upconv(kernel: int = 2, stride: int = 2, bias: bool = True, out: str = "y", **attrs) -> onnx.ModelProto:  # type: ignore[name-defined]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(C_IN, C_OUT, kernel, kernel)).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=C_OUT).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(
        "ConvTranspose", inputs, [out], kernel_shape=[kernel, kernel], strides=[stride, stride], **attrs
    )
    return _graph([node], inits)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:  # type: ignore[name-defined]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:  # type: ignore[name-defined]
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(("stride", "bias"), [(2, True), (2, False), (3, True)])
def test_an_upconv_becomes_conv_and_depth_to_space_with_the_same_outputs(stride: int, bias: bool) -> None:
    model = _upconv(stride, stride, bias)
    rewrite = upconvs_as_depth_to_space(model)
    assert rewrite.upconvs == 1
    assert _ops(rewrite.model) == ["Conv", "DepthToSpace"]
    onnx.checker.check_model(rewrite.model)
    rng = np.random.default_rng(1)
    for size in [(5, 7), (8, 8)]:
        x = rng.normal(size=(2, C_IN, *size)).astype(np.float32)
        want = _run(model, x)
        assert want.shape == (2, C_OUT, size[0] * stride, size[1] * stride)
        np.testing.assert_allclose(_run(rewrite.model, x), want, rtol=1e-5, atol=1e-5)
    assert {t.name for t in rewrite.model.graph.initializer}.isdisjoint({"w", "b"})  # old weights gone


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": 3, "stride": 2},  # overlapping windows: not one block per pixel
        {"kernel": 2, "stride": 2, "pads": [1, 1, 1, 1]},
        {"kernel": 2, "stride": 2, "output_padding": [1, 1]},
        {"kernel": 2, "stride": 2, "dilations": [2, 2]},
    ],
)
def test_other_transposed_convs_are_left_alone(attrs: dict) -> None:
    model = _upconv(**attrs)
    kept, note = simplify(model, lambda _: pytest.fail("nothing to check"))
    assert kept is model and "no kernel == stride" in note


def _with_tail(crop: int) -> onnx.ModelProto:  # type: ignore[name-defined]
    """ConvTranspose -> Slice -> Pad -> Relu, what tf2onnx makes of Conv2DTranspose; the
    Slice keeps `crop` fewer rows than the upconv makes (0: a no-op pair), and a Shape of
    the upconv, where tf2onnx's shape arithmetic starts, is left for the pruning to drop."""
    base = _upconv(out="up")
    big = np.iinfo(np.int64).max
    inits = [
        *base.graph.initializer,
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([-crop if crop else big], np.int64), "ends"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(np.zeros(8, np.int64), "pads"),
    ]
    nodes = [
        *base.graph.node,
        helper.make_node("Shape", ["up"], ["up_shape"]),
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["sliced"]),
        helper.make_node("Pad", ["sliced", "pads"], ["padded"]),
        helper.make_node("Relu", ["padded"], ["y"]),
    ]
    return _graph(nodes, inits)


def _same_as(reference: onnx.ModelProto):  # type: ignore[name-defined]
    x = np.random.default_rng(2).normal(size=(1, C_IN, 6, 5)).astype(np.float32)
    want = _run(reference, x)

    def same(candidate: onnx.ModelProto) -> bool:  # type: ignore[name-defined]
        got = _run(candidate, x)
        return got.shape == want.shape and bool(np.allclose(got, want, atol=1e-5))

    return same


def test_the_no_op_slice_pad_tail_goes_with_its_shape_arithmetic() -> None:
    model = _with_tail(crop=0)
    rewritten, note = simplify(model, _same_as(model))
    assert note == "1 up-convolutions as Conv 1x1 + DepthToSpace, 1 Slice/Pad tails dropped"
    assert _ops(rewritten) == ["Conv", "DepthToSpace", "Relu"]


def test_a_tail_that_crops_is_kept_after_the_check_fails() -> None:
    model = _with_tail(crop=1)
    rewritten, note = simplify(model, _same_as(model))
    assert note == "1 up-convolutions as Conv 1x1 + DepthToSpace"  # second try: tail kept
    assert _ops(rewritten)[:2] == ["Conv", "DepthToSpace"] and "Slice" in _ops(rewritten)


def test_a_rewrite_that_does_not_match_is_not_kept() -> None:
    model = _upconv()
    kept, note = simplify(model, lambda _: False)
    assert kept is model and "did not match" in note
