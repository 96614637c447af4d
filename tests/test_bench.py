"""bench: cold start apart from warm latency, agreement beside speed; auto picks by measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import generator_info, make_generator, make_segmenter, segmenter_info, solid

from segen_edge import zoo
from segen_edge.bench import agreement, cold_start, measure, real_batch, sample_batch
from segen_edge.generate import Generator
from segen_edge.metadata import ModelInfo
from segen_edge.onnxmeta import read_metadata
from segen_edge.segment import Segmenter
from segen_edge.session import create_session


def _open(path: Path) -> Any:
    info = ModelInfo.from_props(read_metadata(path))
    loaded = create_session(path, "cpu", threads=1)
    return (Segmenter if info.task == "segment" else Generator)(loaded, info)


def test_cold_start_is_reported_apart_from_warm_latency(seg_model: Path, capfd) -> None:
    model, cold = cold_start(lambda: _open(seg_model))
    assert cold.session_ms > 0 and cold.first_run_ms > 0
    result = measure(model, 2, runs=3, warmup=1, cold=cold, reference=_open(seg_model))
    assert result.cold_start_ms == pytest.approx(cold.session_ms + cold.first_run_ms, abs=1e-3)
    assert result.to_json()["cold_start_ms"] == result.cold_start_ms
    assert result.agreement == 1.0 and result.agreement_on == "8 synthetic inputs"
    assert capfd.readouterr() == ("", "")  # returns results, prints nothing


def test_segmenter_agreement_on_real_images(tmp_path: Path) -> None:
    """A model that swaps two classes disagrees wherever those classes win."""
    fp32 = make_segmenter(tmp_path / "a-fp32.onnx", segmenter_info())
    swapped = make_segmenter(tmp_path / "a-int8.onnx", segmenter_info(precision="int8"))
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(swapped))
    weight = proto.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(np.eye(3, dtype=np.float32)[:, [1, 0, 2]], "w"))
    onnx.save(proto, str(swapped))
    data = tmp_path / "data"
    solid(data / "red.png", (255, 0, 0))
    solid(data / "blue.png", (0, 0, 255))
    reference, model = _open(fp32), _open(swapped)
    batch = real_batch(model, data)
    assert batch is not None and len(batch) == 2
    assert agreement(model, reference, batch) == {"agreement": 0.5}  # blue agrees, red does not
    result = measure(model, 1, runs=2, warmup=0, reference=reference, data=data)
    assert (result.agreement, result.agreement_on, result.precision) == (0.5, "2 real images", "int8")


def test_generator_agreement_is_mse_and_psnr(tmp_path: Path) -> None:
    path = make_generator(tmp_path / "g-fp32.onnx", generator_info())
    same = agreement(_open(path), _open(path), sample_batch(_open(path), 4))
    assert same == {"mse": 0.0, "psnr_db": None}
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    weight = proto.graph.initializer[0]
    values = numpy_helper.to_array(weight) * 0.9
    weight.CopyFrom(numpy_helper.from_array(values.astype(np.float32), weight.name))
    other = tmp_path / "g-fp16.onnx"
    onnx.save(proto, str(other))
    result = agreement(_open(other), _open(path), sample_batch(_open(path), 4))
    assert result["mse"] is not None and result["mse"] > 0
    assert result["psnr_db"] == pytest.approx(10 * np.log10(255**2 / result["mse"]), abs=0.01)


# -- --precision auto from the export's measurements ----------------------------------------


def _measured(folder: Path, rows: dict[str, dict[str, Any]]) -> zoo.ModelRef:
    """tiny-fp32 / tiny-int8 files whose card holds `rows` as the CPU EP's measurements."""
    card = {"export": {"providers": {"cpu": {"precisions": rows}}}}
    for precision in ("fp32", "int8"):
        make_segmenter(folder / f"tiny-{precision}.onnx", segmenter_info(precision=precision, card=card))
    return zoo.resolve(str(folder / "tiny-fp32.onnx"), "segment")


def _row(file: str, b1: float, b8: float, ok: bool = True) -> dict[str, Any]:
    return {"file": file, "latency_ms": {"1": b1, "8": b8}, "within_budget": ok}


def test_auto_picks_the_fastest_measured_precision_per_batch(tmp_path: Path) -> None:
    ref = _measured(tmp_path, {"fp32": _row("fp32", 4.0, 40.0), "int8": _row("int8", 3.0, 45.0)})
    ref = zoo.ModelRef(ref.name, ref.files)  # as a bundled model: auto may choose
    assert ref.choose("auto", "cpu", 1).precision == "int8"
    assert ref.choose("auto", "cpu", 8).precision == "fp32"  # int8 is slower at batch 8 here
    assert ref.choose("auto", "cpu", 6).precision == "fp32"  # nearest measured batch: 8
    assert ref.pick("auto", "cpu", 1) == ("int8", tmp_path / "tiny-int8.onnx")
    assert ref.choose("int8", "cpu", 8).precision == "int8"  # asked for: given


def test_auto_never_picks_a_precision_over_budget(tmp_path: Path) -> None:
    rows = {"fp32": _row("fp32", 4.0, 40.0), "int8": _row("int8", 1.0, 10.0, ok=False)}
    ref = _measured(tmp_path, rows)
    ref = zoo.ModelRef(ref.name, ref.files)
    for batch in (1, 8):
        assert ref.choose("auto", "cpu", batch).precision == "fp32"


def test_auto_without_measurements_takes_the_float_file(tmp_path: Path) -> None:
    for precision in ("fp32", "int8"):
        make_segmenter(tmp_path / f"plain-{precision}.onnx", segmenter_info(precision=precision))
    ref = zoo.resolve(str(tmp_path / "plain-fp32.onnx"), "segment")
    ref = zoo.ModelRef(ref.name, ref.files)
    assert ref.measurements() == {}
    # nothing says the int8 file is accurate: the float one, on every CPU engine
    for provider in ("cpu", "openvino", "openvino-runtime"):
        assert ref.choose("auto", provider).precision == "fp32"
    assert ref.choose("int8", "cpu").precision == "int8"  # asked for: given


def test_bf16_is_measured_only_where_the_cpu_has_it(tmp_path: Path, monkeypatch) -> None:
    rows = {"fp32": _row("fp32", 4.0, 40.0), "bf16": {**_row("fp32", 2.0, 20.0), "bf16": True}}
    card = {"export": {"providers": {"openvino": {"precisions": rows}}}}
    make_segmenter(tmp_path / "b-fp32.onnx", segmenter_info(card=card))
    ref = zoo.ModelRef("b", {"fp32": tmp_path / "b-fp32.onnx"})
    monkeypatch.setattr(zoo, "_bf16_ok", lambda: True)
    choice = ref.choose("auto", "openvino")
    assert (choice.precision, choice.bf16, choice.path.name) == ("bf16", True, "b-fp32.onnx")
    monkeypatch.setattr(zoo, "_bf16_ok", lambda: False)  # a CPU without AVX512-BF16 / AMX
    assert ref.choose("auto", "openvino").precision == "fp32"


def test_openvino_int8_file_is_picked_on_openvino_only(tmp_path: Path) -> None:
    for name in ("v-fp32", "v-int8", "v-int8.openvino"):
        make_segmenter(tmp_path / f"{name}.onnx", segmenter_info(precision=name.split("-")[1][:4]))
    ref = zoo.resolve(str(tmp_path / "v-fp32.onnx"), "segment")
    assert ref.variants == {"int8.openvino": tmp_path / "v-int8.openvino.onnx"}
    assert ref.pick("int8", "openvino")[1].name == "v-int8.openvino.onnx"
    assert ref.pick("int8", "cpu")[1].name == "v-int8.onnx"
