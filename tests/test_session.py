"""Sessions: the provider asked for is checked against the one the session really got."""

from __future__ import annotations

from pathlib import Path

import pytest

from segen_edge.errors import ModelError, ProviderError
from segen_edge.session import create_session, cuda_available, openvino_devices, optimized_path


def test_cpu_session_reports_cpu(seg_model: Path) -> None:
    loaded = create_session(seg_model, "cpu", threads=1)
    assert loaded.provider == "cpu"
    assert loaded.session.get_providers()[0] == "CPUExecutionProvider"


def test_auto_says_which_provider_it_got(seg_model: Path) -> None:
    said: list[str] = []
    loaded = create_session(seg_model, "auto", warn=said.append)
    assert said == [f"segen-edge: running {seg_model.name} on {loaded.provider}"]
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
    import numpy as np

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
