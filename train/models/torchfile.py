"""Read a PyTorch state dict (`torch.save(model.state_dict(), path)`) into numpy arrays
without PyTorch: both of torch.save's formats, the zip archive (torch >= 1.6) and the older
stream of pickles. Only tensors, plain containers and OrderedDict are rebuilt; any other
class in the pickle is refused (a state dict holds nothing else, and unpickling arbitrary
classes would run arbitrary code)."""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from segen_edge.errors import BadInputError

_STORAGE_TYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # raw bits; read as float32 below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor(storage: str, offset: int, shape: Any, strides: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(strides))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.types: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid: Any) -> str:
        # ('storage', storage type, key, location, numel[, view metadata])
        storage_type, key = pid[1], str(pid[2])
        self.types[key] = storage_type.name
        return key


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """name -> array (float tensors as float32) of the state dict saved at `path`."""
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as file:
            return _read_legacy(file)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error, zipfile.BadZipFile) as exc:
        raise BadInputError(
            f"{path}: not a PyTorch state dict saved with torch.save ({exc}); "
            "save the model's state_dict() or give a Keras weights file"
        ) from None


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickled = next((name for name in archive.namelist() if name.endswith("data.pkl")), None)
        if pickled is None:
            raise ValueError("a zip archive without torch.save's data.pkl")
        root = pickled[: -len("data.pkl")]
        with archive.open(pickled) as file:
            unpickler = _Unpickler(file)
            state = unpickler.load()
        storages: dict[str, np.ndarray] = {
            key: np.frombuffer(archive.read(f"{root}data/{key}"), _STORAGE_TYPES[kind])
            for key, kind in unpickler.types.items()
        }
    return _materialise(state, storages)


def _read_legacy(file: IO[bytes]) -> dict[str, np.ndarray]:
    if _Unpickler(file).load() != _LEGACY_MAGIC:
        raise ValueError("it does not start with torch.save's magic number")
    for _ in range(2):  # protocol version, system info
        _Unpickler(file).load()
    unpickler = _Unpickler(file)
    state = unpickler.load()
    storages = {}
    for key in _Unpickler(file).load():  # the storages' keys, in the order they follow
        dtype = np.dtype(_STORAGE_TYPES[unpickler.types[key]])
        (count,) = struct.unpack("<q", file.read(8))
        data = file.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise EOFError(f"storage {key} ends early")
        storages[key] = np.frombuffer(data, dtype)
    return _materialise(state, storages)


def _materialise(state: Any, storages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint around the state dict
    if not isinstance(state, dict):
        raise ValueError(f"the file holds a {type(state).__name__}, not a dict of tensors")
    arrays = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            continue
        flat = storages[ref.key]
        if flat.dtype == np.uint16:  # bfloat16 bits -> float32
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], ref.shape, tuple(s * item for s in ref.strides), writeable=False
        )
        array = np.array(view)
        arrays[str(name)] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return arrays
