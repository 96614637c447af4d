"""What an ONNX file holds, read from its bytes: inputs, outputs, ops, opset, producer.

Neither `onnx` nor onnxruntime is needed (`info` describes files onnxruntime cannot load),
and a file is read once. The ModelProto is walked with onnxmeta's protobuf reader; only the
fields below are decoded. From the graph we infer what a bare file (one without `segen.*`
metadata) needs: its task, layout, channels, fixed sizes, and whether it ends in logits,
probabilities or class ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .errors import ModelError
from .onnxmeta import _fields, parse_metadata, read_model_bytes

ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}
# Ops that pass values through unchanged in kind: looked through to find what ends a graph.
_PASS_THROUGH = {
    "Transpose",
    "Identity",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "Resize",
    "DequantizeLinear",
    "QuantizeLinear",
    "Slice",
    "Pad",
    "Flatten",
}

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSummary:
    """The facts of one ONNX file that the runtime and `segen-edge info` use."""

    path: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opsets: dict[str, int]
    producer: str
    ops: Mapping[str, int] = field(default_factory=dict)  # op type -> count
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_op: str = ""  # the op that makes the first output, through pass-through ops
    external_data: tuple[str, ...] = ()  # files the initializers point to

    @property
    def precision(self) -> str:
        """A guess from the graph: int8 with QDQ or QLinear ops, fp16 with float16 tensors."""
        if (
            self.ops.get("QuantizeLinear")
            or self.ops.get("DequantizeLinear")
            or any(op.startswith("QLinear") for op in self.ops)
        ):
            return "int8"
        if any(t.dtype == "float16" for t in (*self.inputs, *self.outputs)) or self.ops.get("_fp16"):
            return "fp16"
        return "fp32"

    @property
    def output_kind(self) -> str:
        """logits | probs | ids, from the first output's type and the op that makes it."""
        out = self.outputs[0] if self.outputs else None
        if out is not None and out.dtype.startswith(("int", "uint")):
            return "ids"
        if self.last_op in ("ArgMax",):
            return "ids"
        if self.last_op in ("Softmax", "Sigmoid", "LogSoftmax"):
            return "probs" if self.last_op != "LogSoftmax" else "logits"
        return "logits"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "producer": self.producer,
            "opsets": self.opsets,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "precision_guess": self.precision,
            "output_guess": self.output_kind,
            "ops": dict(
                sorted(((k, v) for k, v in self.ops.items() if not k.startswith("_")), key=lambda kv: -kv[1])
            ),
            "external_data": list(self.external_data),
        }


def summarize(data: bytes, path: str = "<bytes>") -> GraphSummary:
    """Parse a serialized ModelProto. ModelError naming `path` when it is not one."""
    try:
        return _summarize(data, path)
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model ({exc}); expected a .onnx file") from None


def summarize_file(path: str | Path) -> GraphSummary:
    return summarize(read_model_bytes(path), str(path))


def _summarize(data: bytes, path: str) -> GraphSummary:
    top = _fields(memoryview(data))
    producer, version, graph, opsets = "", "", None, {}
    for number, wire, value in top:
        if number == 2 and wire == 2:
            producer = _text(value)
        elif number == 3 and wire == 2:
            version = _text(value)
        elif number == 7 and wire == 2:
            graph = cast(memoryview, value)
        elif number == 8 and wire == 2:
            entry = _fields(cast(memoryview, value))
            domain = next((_text(v) for n, w, v in entry if n == 1 and w == 2), "") or "ai.onnx"
            opsets[domain] = next((cast(int, v) for n, w, v in entry if n == 2 and w == 0), 0)
    if graph is None:
        raise ValueError("no graph")
    nodes: list[tuple[str, list[str], list[str]]] = []
    initializers: set[str] = set()
    external: list[str] = []
    fp16_weights = 0
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for number, wire, value in _fields(graph):
        if wire != 2:
            continue
        view = cast(memoryview, value)
        if number == 1:
            nodes.append(_node(view))
        elif number == 5:
            weight, dtype, location = _initializer(view)
            initializers.add(weight)
            fp16_weights += dtype == 10
            if location:
                external.append(location)
        elif number == 11:
            inputs.append(_value_info(view))
        elif number == 12:
            outputs.append(_value_info(view))
    inputs = [t for t in inputs if t.name not in initializers]
    ops = Counter(op for op, _, _ in nodes)
    if fp16_weights:
        ops["_fp16"] = fp16_weights
    return GraphSummary(
        path=path,
        size_bytes=len(data),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opsets=opsets,
        producer=f"{producer} {version}".strip(),
        ops=dict(ops),
        metadata=parse_metadata(data),
        last_op=_last_op(nodes, outputs[0].name if outputs else ""),
        external_data=tuple(sorted(set(external))),
    )


def _text(value: object) -> str:
    return bytes(cast(memoryview, value)).decode("utf-8")


def _node(view: memoryview) -> tuple[str, list[str], list[str]]:
    op, ins, outs = "", [], []
    for number, wire, value in _fields(view):
        if wire != 2:
            continue
        if number == 1:
            ins.append(_text(value))
        elif number == 2:
            outs.append(_text(value))
        elif number == 4:
            op = _text(value)
    return op, ins, outs


def _initializer(view: memoryview) -> tuple[str, int, str]:
    name, dtype, location = "", 0, ""
    for number, wire, value in _fields(view):
        if number == 8 and wire == 2:
            name = _text(value)
        elif number == 2 and wire == 0:
            dtype = cast(int, value)
        elif number == 13 and wire == 2:  # external_data: StringStringEntryProto
            entry = {n: _text(v) for n, w, v in _fields(cast(memoryview, value)) if w == 2}
            if entry.get(1) == "location":
                location = entry.get(2, "")
    return name, dtype, location


def _value_info(view: memoryview) -> TensorSpec:
    name, dtype = "", "unknown"
    shape: tuple[Dim, ...] = ()
    for number, wire, value in _fields(view):
        if number == 1 and wire == 2:
            name = _text(value)
        elif number == 2 and wire == 2:
            for n, w, tensor in _fields(cast(memoryview, value)):
                if n == 1 and w == 2:  # tensor_type
                    dtype, shape = _tensor_type(cast(memoryview, tensor))
    return TensorSpec(name, dtype, shape)


def _tensor_type(view: memoryview) -> tuple[str, tuple[Dim, ...]]:
    dtype, dims = "unknown", []
    for number, wire, value in _fields(view):
        if number == 1 and wire == 0:
            dtype = ELEM_TYPES.get(cast(int, value), f"type {value}")
        elif number == 2 and wire == 2:
            for n, w, dim in _fields(cast(memoryview, value)):
                if n != 1 or w != 2:
                    continue
                size: Dim = None
                for dn, dw, dv in _fields(cast(memoryview, dim)):
                    if dn == 1 and dw == 0:
                        size = cast(int, dv)
                    elif dn == 2 and dw == 2:
                        size = _text(dv)
                dims.append(size)
    return dtype, tuple(dims)


def _last_op(nodes: list[tuple[str, list[str], list[str]]], output: str) -> str:
    """The op that makes `output`, looking back through ops that keep the values' kind."""
    made_by = {out: (op, ins) for op, ins, outs in nodes for out in outs}
    name, seen = output, set()
    while name in made_by and name not in seen:
        seen.add(name)
        op, ins = made_by[name]
        if op not in _PASS_THROUGH or not ins:
            return op
        name = ins[0]
    return ""


# -- what a bare file implies ---------------------------------------------------------------


def infer_description(graph: GraphSummary) -> dict[str, Any]:
    """ModelInfo fields the graph itself states: task, layout, channels, image size, latent
    size, output kind. A user's overrides and the file's `segen.*` keys take precedence."""
    if not graph.inputs:
        return {}
    shape = graph.inputs[0].shape
    found: dict[str, Any] = {"output": graph.output_kind, "precision": graph.precision}
    latents_as_image = len(shape) == 4 and _fixed(shape[2]) == 1 and _fixed(shape[3]) == 1
    if len(shape) == 2 or (latents_as_image and (_fixed(shape[1]) or 0) > 4):
        found["task"] = "generate"  # (N, nz), or (N, nz, 1, 1) as PyTorch's DCGAN takes them
        if _fixed(shape[1]):
            found["latent_size"] = shape[1]
        if graph.last_op == "Sigmoid":
            found["output_range"] = "unit"  # images in [0, 1], not a tanh's [-1, 1]
        return found
    if len(shape) != 4:
        return found
    found["task"] = "segment"
    if graph.inputs[0].dtype == "uint8":
        found["pixel_scale"] = 1.0  # its preprocessing is inside the graph: it takes the pixels
    c_first, c_last = _fixed(shape[1]), _fixed(shape[3])
    if c_first in (1, 3) and c_last not in (1, 3):
        layout = "NCHW"
    elif c_last in (1, 3):
        layout = "NHWC"
    else:
        layout = ""
    if layout:
        found["layout"] = layout
        channels = c_first if layout == "NCHW" else c_last
        found["channels"] = channels
        h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        if _fixed(h) and _fixed(w):
            found["image_size"] = (int(cast(int, h)), int(cast(int, w)))
            found["fixed_size"] = True
    if graph.outputs and len(graph.outputs[0].shape) == 4 and layout:
        out = graph.outputs[0].shape
        first, last = _fixed(out[1]), _fixed(out[3])
        classes = first if layout == "NCHW" else last
        if classes is None and (first is None) != (last is None):  # the other axis is the fixed one
            classes = first or last
        if classes and found["output"] != "ids":
            found["classes"] = classes
    return found


def _fixed(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None
