"""Graph rewrites that make a converted network faster where it runs, each one checked
against the graph it replaces before it is kept.

Up-convolutions: a ConvTranspose whose kernel equals its stride (Keras'
`Conv2DTranspose(f, 2, strides=2)`, the U-Net's up-convolution) computes, for every input
pixel, an s x s block of output pixels from that pixel alone: a 1x1 Conv to f*s*s channels
followed by DepthToSpace is the same arithmetic. The Conv form has int8 kernels in
onnxruntime's CPU EP, where ConvTranspose has none (its quantized weights are dequantized
on every run and the layer runs in float), and the Slice/Pad pair tf2onnx appends to each
ConvTranspose to reach TensorFlow's computed output shape, a no-op when kernel == stride,
goes away with its shape arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class Rewrite:
    model: onnx.ModelProto
    upconvs: int  # ConvTranspose nodes now Conv + DepthToSpace
    tails: int  # Slice/Pad pairs after them dropped


def upconvs_as_depth_to_space(model: onnx.ModelProto, drop_tails: bool = True) -> Rewrite:
    """A copy of `model` with each kernel == stride ConvTranspose (constant weights, no
    padding, groups or dilation) replaced by Conv 1x1 + DepthToSpace; with `drop_tails`,
    a Slice -> Pad chain that is the up-convolution's only consumer is bypassed too (the
    caller checks the result: the pair is a no-op only for the shapes tf2onnx makes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return Rewrite(out, 0, 0)  # control flow: outer names used inside; left alone
    weights = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    new_nodes: list[onnx.NodeProto] = []
    upconvs = tails = 0
    for node in graph.node:
        stride = _block_stride(node, weights)
        if stride is None:
            new_nodes.append(node)
            continue
        upconvs += 1
        w = numpy_helper.to_array(weights[node.input[1]])  # (C_in, C_out, s, s)
        c_in, c_out = w.shape[:2]
        # output channel co*s*s + i*s + j of the 1x1 conv is pixel (i, j) of channel co's
        # block: DepthToSpace's CRD order
        w1 = w.transpose(1, 2, 3, 0).reshape(c_out * stride * stride, c_in, 1, 1)
        inputs = [node.input[0], _add(graph, node.name + "/as_conv/W", w1)]
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(weights[node.input[2]])
            inputs.append(_add(graph, node.name + "/as_conv/B", np.repeat(b, stride * stride)))
        blocks = node.output[0] + "/blocks"
        new_nodes.append(
            helper.make_node("Conv", inputs, [blocks], name=node.name + "/as_conv", kernel_shape=[1, 1])
        )
        new_nodes.append(
            helper.make_node(
                "DepthToSpace",
                [blocks],
                [node.output[0]],
                name=node.name + "/to_space",
                blocksize=stride,
                mode="CRD",
            )
        )
        if drop_tails and _bypass_tail(graph, node.output[0], consumers):
            tails += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(graph)
    return Rewrite(out, upconvs, tails)


def simplify(model: onnx.ModelProto, same: Callable[[onnx.ModelProto], bool]) -> tuple[onnx.ModelProto, str]:
    """The rewritten model if `same(rewritten)` holds (the caller's numerical check against
    `model`), trying without the tail bypass before giving up; and what was done."""
    for drop_tails in (True, False):
        rewrite = upconvs_as_depth_to_space(model, drop_tails)
        if not rewrite.upconvs:
            return model, "no kernel == stride up-convolutions"
        if same(rewrite.model):
            dropped = f", {rewrite.tails} Slice/Pad tails dropped" if rewrite.tails else ""
            return rewrite.model, f"{rewrite.upconvs} up-convolutions as Conv 1x1 + DepthToSpace{dropped}"
        if not rewrite.tails:
            break  # without tails to keep, the second try would be this very graph
    return model, "up-convolutions kept: the rewritten graph did not match"


def _block_stride(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> int | None:
    """s for a ConvTranspose the rewrite covers, else None."""
    if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs.get("kernel_shape", weights[node.input[1]].dims[2:]))
    strides = list(attrs.get("strides", [1] * len(kernel)))
    if len(kernel) != 2 or kernel != strides or kernel[0] != kernel[1] or kernel[0] < 2:
        return None
    if list(weights[node.input[1]].dims[2:]) != kernel:
        return None
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    if any(attrs.get("pads", [0])) or any(attrs.get("output_padding", [0])) or "output_shape" in attrs:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return None
    return int(kernel[0])


def _bypass_tail(graph: onnx.GraphProto, tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Point the consumers of a Slice -> Pad chain on `tensor` at `tensor` itself."""
    data_users = [n for n in consumers.get(tensor, []) if n.op_type != "Shape"]
    if len(data_users) != 1 or data_users[0].op_type != "Slice" or data_users[0].input[0] != tensor:
        return False
    pads = consumers.get(data_users[0].output[0], [])
    if len(pads) != 1 or pads[0].op_type != "Pad" or pads[0].input[0] != data_users[0].output[0]:
        return False
    end = pads[0].output[0]
    if any(o.name == end for o in graph.output):
        return False
    for user in consumers.get(end, []):
        for i, name in enumerate(user.input):
            if name == end:
                user.input[i] = tensor
    return True


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _add(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes no graph output depends on, then initializers nothing reads."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
