"""The OpenVINO EP built into onnxruntime-openvino (the `openvino` extra), on any x86 CPU.

Skipped where that build is not installed (the cpu extra); run them in a venv with
`pip install onnxruntime-openvino`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_session

from segen_edge.errors import BadInputError
from segen_edge.providers import has_bf16, openvino_builtin
from segen_edge.session import create_session

pytestmark = pytest.mark.skipif(
    not openvino_builtin(), reason="needs onnxruntime-openvino (the openvino extra)"
)


def test_openvino_runs_and_matches_the_cpu_ep(seg_model: Path) -> None:
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    ov = create_session(seg_model, "openvino", threads=1)
    assert ov.provider == "openvino"
    assert ov.session.get_providers()[0] == "OpenVINOExecutionProvider"
    np.testing.assert_allclose(
        run_session(ov, x), run_session(create_session(seg_model, "cpu"), x), atol=1e-4
    )


def test_auto_prefers_openvino(seg_model: Path) -> None:
    assert create_session(seg_model, "auto").provider == "openvino"


def test_options_per_job_and_compiled_model_cache(seg_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    loaded = create_session(seg_model, "openvino", threads=2, streams=2)
    options = loaded.provider_options
    assert (options["device_type"], options["num_of_threads"], options["num_streams"]) == ("CPU", "2", "2")
    run_session(loaded, np.zeros((1, 16, 16, 3), np.float32))
    cache = Path(options["cache_dir"])
    assert cache.parent == tmp_path / "cache" and any(cache.iterdir())  # compiled blobs


def test_a_batch_job_gets_one_stream_per_lane(seg_model: Path) -> None:
    """Lanes of one-thread runs (what segment's batch job opens): as many OpenVINO streams
    as lanes, the threads shared among them, so the runs in flight do not queue on one."""
    from segen_edge.pipeline import cpu_count, lanes_for

    loaded = create_session(seg_model, "openvino", threads=1)
    options = loaded.provider_options
    lanes = lanes_for("openvino", 1)
    assert (options["num_streams"], options["num_of_threads"]) == (str(lanes), str(lanes))
    assert lanes == cpu_count()


def test_bf16_only_where_the_cpu_has_it(seg_model: Path) -> None:
    if has_bf16():
        loaded = create_session(seg_model, "openvino", bf16=True)
        assert loaded.bf16 and "INFERENCE_PRECISION_HINT" in loaded.provider_options["load_config"]
    else:
        with pytest.raises(BadInputError, match="neither AVX512-BF16 nor AMX"):
            create_session(seg_model, "openvino", bf16=True)


def test_in_memory_model_through_the_runtime(seg_model: Path) -> None:
    """What export does: bytes -> session -> the runtime's Segmenter, on OpenVINO."""
    from conftest import segmenter_info

    from export.measure import predictions, runtime_model

    info = segmenter_info()
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    ov = predictions(runtime_model(seg_model.read_bytes(), info, "openvino"), images)
    cpu = predictions(runtime_model(seg_model.read_bytes(), info, "cpu"), images)
    assert ov.shape == (3, 16, 16) and np.mean(ov == cpu) > 0.99


def test_external_weights_change_is_seen_under_openvino(tmp_path: Path, monkeypatch) -> None:
    from test_session import _external_model

    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    path = _external_model(tmp_path / "m", np.eye(4))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(run_session(create_session(path, "openvino"), x), x)
    (tmp_path / "m" / "w.bin").write_bytes((3 * np.eye(4, dtype=np.float32)).tobytes())
    np.testing.assert_allclose(run_session(create_session(path, "openvino"), x), 3 * x)
