"""OpenVINO's own runtime (`--device openvino-runtime`, the openvino package) reading the
same ONNX files: results, per-shape compilation, per-job options, lanes, errors.

Skipped where the openvino package is not installed; the test extra installs it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_session, segmenter_info

from segen_edge import openvino_runtime
from segen_edge.errors import BadInputError, ModelError, ProviderError
from segen_edge.loading import load_segmenter
from segen_edge.pipeline import cpu_count
from segen_edge.providers import cpu_providers, has_bf16
from segen_edge.session import create_session

pytestmark = pytest.mark.skipif(
    not openvino_runtime.available(), reason="needs OpenVINO's runtime (pip install openvino)"
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_runs_the_onnx_file_like_the_cpu_ep(seg_model: Path) -> None:
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    loaded = create_session(seg_model, "openvino-runtime", threads=1)
    assert loaded.provider == "openvino-runtime"
    assert "openvino-runtime" in cpu_providers()
    port = loaded.session.get_inputs()[0]
    assert port.name == "image" and isinstance(port.shape[0], str) and port.shape[3] == 3
    np.testing.assert_allclose(
        run_session(loaded, x), run_session(create_session(seg_model, "cpu"), x), atol=1e-5
    )


def test_bytes_and_the_segmenter_api(seg_model: Path) -> None:
    loaded = create_session(seg_model.read_bytes(), "openvino-runtime", name="tiny")
    assert loaded.provider == "openvino-runtime"
    seg = load_segmenter(seg_model, device="openvino-runtime")
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 200
    result = seg.segment(red)
    assert seg.provider == "openvino-runtime" and result.ids.shape == (20, 30)
    assert result.fractions["red"] == 1.0


def test_one_compilation_per_shape_then_one_dynamic(seg_model: Path, monkeypatch) -> None:
    monkeypatch.setattr(openvino_runtime, "MAX_SHAPES", 2)
    loaded = create_session(seg_model, "openvino-runtime")
    cpu = create_session(seg_model, "cpu")
    rng = np.random.default_rng(1)
    for size in (8, 8, 12, 16, 20, 12):
        x = rng.random((1, size, size, 3), dtype=np.float32)
        np.testing.assert_allclose(run_session(loaded, x), run_session(cpu, x), atol=1e-5)
    compiled = loaded.session._compiled
    assert set(compiled) == {(1, 8, 8, 3), (1, 12, 12, 3), None}


def test_a_short_last_batch_runs_padded_not_compiled(seg_model: Path) -> None:
    loaded = create_session(seg_model, "openvino-runtime")
    cpu = create_session(seg_model, "cpu")
    rng = np.random.default_rng(4)
    full, short = (rng.random((n, 16, 16, 3), dtype=np.float32) for n in (8, 3))
    run_session(loaded, full)
    got = run_session(loaded, short)
    assert got.shape[0] == 3
    np.testing.assert_allclose(got, run_session(cpu, short), atol=1e-5)
    assert set(loaded.session._compiled) == {(8, 16, 16, 3)}
    run_session(loaded, rng.random((9, 16, 16, 3), dtype=np.float32))  # a larger one is compiled
    assert (9, 16, 16, 3) in loaded.session._compiled


def test_a_smaller_batch_that_keeps_coming_gets_compiled(seg_model: Path) -> None:
    """Single images after a batch of 8 (a user's API calls): padded only at first, never
    8 images' work per image for good."""
    loaded = create_session(seg_model, "openvino-runtime")
    cpu = create_session(seg_model, "cpu")
    rng = np.random.default_rng(5)
    run_session(loaded, rng.random((8, 16, 16, 3), dtype=np.float32))
    one = rng.random((1, 16, 16, 3), dtype=np.float32)
    for _ in range(openvino_runtime.PAD_RUNS):
        run_session(loaded, one)
    assert (1, 16, 16, 3) not in loaded.session._compiled
    np.testing.assert_allclose(run_session(loaded, one), run_session(cpu, one), atol=1e-5)
    assert (1, 16, 16, 3) in loaded.session._compiled


def test_options_per_job_and_compiled_model_cache(seg_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))
    batch_job = create_session(seg_model, "openvino-runtime", threads=1).provider_options
    streams = cpu_count()
    if streams > 1:
        assert batch_job["NUM_STREAMS"] == str(streams) and batch_job["INFERENCE_NUM_THREADS"] == str(streams)
    assert batch_job["INFERENCE_PRECISION_HINT"] == "f32"  # never bf16 unless asked
    latency = create_session(seg_model, "openvino-runtime")
    assert latency.provider_options["PERFORMANCE_HINT"] == "LATENCY"
    run_session(latency, np.zeros((1, 16, 16, 3), np.float32))
    cache = Path(latency.provider_options["CACHE_DIR"])
    assert cache.parent == tmp_path / "cache" and any(cache.iterdir())  # compiled blobs


def test_a_second_session_starts_from_the_cache_without_reading_the_model(
    seg_model: Path, tmp_path: Path
) -> None:
    """Cold start: each shape's model kept as IR and the ports noted, so the next session of
    the same file compiles from the IR (OpenVINO finds its blob) and never parses the ONNX."""
    cache = tmp_path / "cache"
    cache.mkdir()
    x = np.random.default_rng(6).random((2, 16, 16, 3), dtype=np.float32)
    first = openvino_runtime.RuntimeSession(seg_model, cache=cache)
    expected = first.run(None, {"image": x})[0]
    assert (cache / "shape-2x16x16x3.xml").is_file() and (cache / "shape-2x16x16x3.bin").is_file()
    assert not [p for p in cache.iterdir() if ".part" in p.name]  # written whole, then renamed
    second = openvino_runtime.RuntimeSession(seg_model, cache=cache)
    assert [p.name for p in second.get_inputs()] == [p.name for p in first.get_inputs()]
    assert second.get_outputs() == first.get_outputs()
    np.testing.assert_array_equal(second.run(None, {"image": x})[0], expected)
    assert second._read is None  # ports from the note, weights from the IR
    second.run(None, {"image": x[:1].repeat(3, axis=0)})  # a new shape needs the model itself
    assert second._read is not None


def test_a_damaged_cache_is_made_again(seg_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    x = np.random.default_rng(7).random((1, 16, 16, 3), dtype=np.float32)
    expected = openvino_runtime.RuntimeSession(seg_model, cache=cache).run(None, {"image": x})[0]
    (cache / openvino_runtime.PORTS).write_text("{not json")
    (cache / "shape-1x16x16x3.xml").write_text("<net>torn")
    again = openvino_runtime.RuntimeSession(seg_model, cache=cache)
    np.testing.assert_allclose(again.run(None, {"image": x})[0], expected, atol=1e-6)
    fresh = openvino_runtime.RuntimeSession(seg_model, cache=cache)  # the damaged files replaced
    np.testing.assert_allclose(fresh.run(None, {"image": x})[0], expected, atol=1e-6)
    assert fresh._read is None


def test_bf16_only_where_the_cpu_has_it(seg_model: Path) -> None:
    if has_bf16():
        loaded = create_session(seg_model, "openvino-runtime", bf16=True)
        assert loaded.provider_options["INFERENCE_PRECISION_HINT"] == "bf16"
    else:
        with pytest.raises(BadInputError, match="neither AVX512-BF16 nor AMX"):
            create_session(seg_model, "openvino-runtime", bf16=True)


def test_lanes_each_get_their_own_request(seg_model: Path) -> None:
    seg = load_segmenter(seg_model, device="openvino-runtime", threads=1)
    rng = np.random.default_rng(2)
    batches = [rng.random((2, 16, 16, 3), dtype=np.float32) for _ in range(12)]
    serial = [seg.run(b) for b in batches]
    threads_seen: set[int] = set()
    original = seg.loaded.session.run

    def spy(names, feeds):
        threads_seen.add(threading.get_ident())
        return original(names, feeds)

    seg.loaded.session.run = spy  # type: ignore[method-assign]
    parallel = list(seg.run_many(batches, lanes=3))
    assert len(threads_seen) > 1
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_broken_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07 not a model")
    with pytest.raises(ModelError, match=r"broken\.onnx: OpenVINO cannot run this model"):
        create_session(bad, "openvino-runtime")


def test_not_installed_says_how_to_install(seg_model: Path, monkeypatch) -> None:
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    with pytest.raises(ProviderError, match="pip install openvino"):
        create_session(seg_model, "openvino-runtime")


@pytest.mark.skipif(not (DATA / "pets" / "images").is_dir(), reason="needs ../shared/data/pets")
def test_bundled_int8_unet_agrees_with_the_cpu_ep_on_real_photos() -> None:
    images = sorted((DATA / "pets" / "images").glob("*.jpg"))[:4]
    ov = load_segmenter("unet-pets", device="openvino-runtime", precision="int8")
    cpu = load_segmenter("unet-pets", device="cpu", precision="fp32")
    same = total = 0
    for a, b in zip(ov.segment(list(images)), cpu.segment(list(images)), strict=True):
        same += int(np.count_nonzero(a.ids == b.ids))
        total += a.ids.size
    assert same / total > 0.98


def test_in_memory_model_through_export_measure(seg_model: Path) -> None:
    from export.measure import predictions, runtime_model

    info = segmenter_info()
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    ov = predictions(runtime_model(seg_model.read_bytes(), info, "openvino-runtime"), images)
    cpu = predictions(runtime_model(seg_model.read_bytes(), info, "cpu"), images)
    assert ov.shape == (3, 16, 16) and np.mean(ov == cpu) > 0.99
