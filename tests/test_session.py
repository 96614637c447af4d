"""Sessions: the provider asked for is checked against the one the session really got."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segen_edge.cache import external_data_files, optimized_path
from segen_edge.errors import BadInputError, ModelError, ProviderError
from segen_edge.providers import check_bf16, cuda_available, has_bf16, openvino_devices, openvino_options
from segen_edge.session import create_session

onnx = pytest.importorskip("onnx")


def test_cpu_session_reports_cpu(seg_model: Path) -> None:
    loaded = create_session(seg_model, "cpu", threads=1)
    assert loaded.provider == "cpu"
    assert loaded.session.get_providers()[0] == "CPUExecutionProvider"


def test_auto_logs_which_provider_it_got(seg_model: Path, caplog, capsys) -> None:
    caplog.set_level("INFO", logger="segen_edge")
    loaded = create_session(seg_model, "auto")
    assert f"running {seg_model.name} on {loaded.provider}" in caplog.text
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    expected = "cuda" if cuda_available() else ("openvino" if openvino_devices() else "cpu")
    assert loaded.provider == expected


@pytest.mark.skipif(cuda_available(), reason="CUDA is available here")
def test_cuda_without_gpu_is_an_error_with_the_fix(seg_model: Path) -> None:
    with pytest.raises(ProviderError, match=r"pip install 'segen-edge\[gpu\]'"):
        create_session(seg_model, "cuda")


@pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu and a usable GPU")
def test_cuda_session_really_runs_on_cuda(seg_model: Path) -> None:  # pragma: no cover - GPU only
    try:
        loaded = create_session(seg_model, "cuda")
    except ProviderError as exc:
        pytest.skip(f"CUDA did not load: {exc}")
    assert loaded.provider == "cuda"


def test_openvino_explicit(seg_model: Path) -> None:
    if openvino_devices():
        assert create_session(seg_model, "openvino").provider == "openvino"
    else:
        with pytest.raises(ProviderError, match=r"segen-edge\[openvino\]"):
            create_session(seg_model, "openvino")


def test_missing_and_invalid_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        create_session(tmp_path / "nope.onnx", "cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelError, match=r"junk\.onnx"):
        create_session(junk, "cpu")


def test_optimized_graph_is_cached_and_gives_the_same_outputs(
    seg_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    first = create_session(seg_model, "cpu")
    cached = optimized_path(seg_model)
    assert cached is not None and cached.is_file()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no .part left behind
    second = create_session(seg_model, "cpu")
    assert first.optimized is None and second.optimized == cached  # the second opened the cache
    name = first.input_name
    got = [s.session.run(None, {name: x})[0] for s in (first, second)]
    np.testing.assert_array_equal(got[0], got[1])
    assert dict(second.session.get_modelmeta().custom_metadata_map) == dict(
        first.session.get_modelmeta().custom_metadata_map
    )


def test_damaged_cache_entry_is_rebuilt(
    seg_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    create_session(seg_model, "cpu")
    cached = optimized_path(seg_model)
    assert cached is not None
    cached.write_bytes(b"not a model")
    loaded = create_session(seg_model, "cpu")
    assert loaded.provider == "cpu" and loaded.optimized is None
    assert cached.read_bytes() != b"not a model"  # replaced by a good one
    assert create_session(seg_model, "cpu").optimized == cached


def test_cache_off_or_unwritable_still_opens(
    seg_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", "off")
    assert optimized_path(seg_model) is None
    assert create_session(seg_model, "cpu").provider == "cpu"
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(blocker / "cache"))
    assert create_session(seg_model, "cpu").provider == "cpu"


def test_cache_key_follows_the_model_bytes(seg_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / seg_model.name
    copy.write_bytes(seg_model.read_bytes())
    assert optimized_path(copy) == optimized_path(seg_model)
    copy.write_bytes(seg_model.read_bytes() + b"\0")
    assert optimized_path(copy) != optimized_path(seg_model)


def _external_model(folder: Path, weight: np.ndarray) -> Path:
    """y = x @ W with W stored in an external data file `w.bin` beside the model."""
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ext",
        [x],
        [y],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "ext.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return path


def test_cache_key_covers_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    path = _external_model(tmp_path / "m", np.eye(4))
    assert external_data_files(path.read_bytes()) == ["w.bin"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = create_session(path, "cpu")
    np.testing.assert_array_equal(first.session.run(None, {"x": x})[0], x)
    assert create_session(path, "cpu").optimized is not None  # cached
    key = optimized_path(path)
    onnx_bytes = path.read_bytes()
    data = tmp_path / "m" / "w.bin"
    assert data.read_bytes() == np.eye(4, dtype=np.float32).tobytes()
    data.write_bytes((2 * np.eye(4, dtype=np.float32)).tobytes())  # new weights, same graph
    assert path.read_bytes() == onnx_bytes and optimized_path(path) != key
    again = create_session(path, "cpu")
    assert again.optimized is None  # not served from the stale entry
    np.testing.assert_array_equal(again.session.run(None, {"x": x})[0], 2 * x)


def test_cache_entry_that_is_a_folder_leaves_no_part_files(
    seg_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    cached = optimized_path(seg_model)
    assert cached is not None
    cached.mkdir(parents=True)
    for _ in range(2):
        assert create_session(seg_model, "cpu").provider == "cpu"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


def test_in_memory_model(seg_model: Path) -> None:
    loaded = create_session(seg_model.read_bytes(), "cpu", name="tiny")
    assert loaded.provider == "cpu" and loaded.path == Path("tiny") and loaded.optimized is None
    x = np.zeros((1, 16, 16, 3), np.float32)
    assert loaded.session.run(None, {loaded.input_name: x})[0].shape == (1, 16, 16, 3)


def test_bf16_needs_the_cpu_feature_and_openvino(seg_model: Path) -> None:
    with pytest.raises(BadInputError, match="neither AVX512-BF16 nor AMX"):
        check_bf16(frozenset({"avx2", "fma"}))
    check_bf16(frozenset({"avx512_bf16"}))  # passes where the CPU has it
    check_bf16(frozenset({"amx_bf16", "amx_tile"}))
    with pytest.raises(BadInputError, match="OpenVINO only"):
        create_session(seg_model, "cpu", bf16=True)
    if not has_bf16():  # this host (AVX2 only): refused before any session is made
        with pytest.raises(BadInputError, match="neither AVX512-BF16 nor AMX"):
            create_session(seg_model, "openvino", bf16=True)


def test_openvino_options_per_job() -> None:
    options = openvino_options(threads=2, streams=4, bf16=True, cache=Path("/c"))
    assert options["device_type"] == "CPU"
    assert (options["num_of_threads"], options["num_streams"], options["cache_dir"]) == ("2", "4", "/c")
    assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    assert "load_config" not in openvino_options(threads=1)


def test_onnxruntime_logs_stay_quiet(seg_model: Path, tmp_path: Path, capfd) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError):
        create_session(junk, "cpu")
    create_session(seg_model, "cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
