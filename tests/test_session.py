"""Sessions: the provider asked for is checked against the one the session really got."""

from __future__ import annotations

from pathlib import Path

import pytest

from segen_edge.errors import ModelError, ProviderError
from segen_edge.session import create_session, cuda_available, openvino_devices


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
