"""Read an ONNX file's metadata_props without onnx or onnxruntime.

`segen-edge models` and `info` list metadata of several files; a session per file would cost
tens of milliseconds each, and the `onnx` package is not a runtime dependency. The ONNX file
is a protobuf ModelProto: we walk its top-level fields and decode only field 14
(metadata_props, repeated StringStringEntryProto {1: key, 2: value}), skipping the graph.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import cast

from .errors import ModelError

_METADATA_PROPS = 14


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one message; LEN values stay as memoryviews."""
    out: list[tuple[int, int, object]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        value: object
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("field runs past the end")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unknown wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        out.append((number, wire, value))
    return out


def parse_metadata(data: bytes) -> dict[str, str]:
    """metadata_props of a serialized ModelProto. ValueError when it is not one."""
    props: dict[str, str] = {}
    view = memoryview(data)
    for number, wire, value in _fields(view):
        if number != _METADATA_PROPS or wire != 2:
            continue
        entry = {n: cast(memoryview, v) for n, w, v in _fields(cast(memoryview, value)) if w == 2}
        key, val = entry.get(1, memoryview(b"")), entry.get(2, memoryview(b""))
        props[bytes(key).decode("utf-8")] = bytes(val).decode("utf-8")
    return props


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of the ONNX file at `path`, or a ModelError naming the file. Read once
    per version of the file (its inode, size and mtime): choosing a model's file and engine asks
    the same files several times, and each read is the whole file."""
    try:
        st = os.stat(path)
    except OSError:
        return _read_metadata(str(path))  # read_model_bytes names what is wrong
    return dict(_cached_metadata(str(path), st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _cached_metadata(path: str, inode: int, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    return tuple(_read_metadata(path).items())


def _read_metadata(path: str) -> dict[str, str]:
    data = read_model_bytes(path)
    try:
        return parse_metadata(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not an ONNX model ({exc}); expected a .onnx file") from None


MAX_MODEL_BYTES = 2**31  # protobuf's own limit; larger "models" are something else


def read_model_bytes(path: str | Path) -> bytes:
    """The bytes of an ONNX file, refusing what is not a regular file of a sane size first
    (a FIFO would block, /dev/zero would never end)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found; pass an ONNX file or a bundled model name") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"{path}: is a folder; pass an .onnx file or a bundled model name")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{path}: not a regular file (a pipe, socket or device); pass an .onnx file")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {st.st_size:,} bytes is larger than any ONNX file can be (2 GiB)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror or exc})") from None
