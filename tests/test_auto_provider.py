"""--device auto among the CPU engines (the CPU EP, OpenVINO's EP and its own runtime):
decided by the recorded measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import make_segmenter, segmenter_info

from segen_edge import zoo
from segen_edge.loading import _auto_cpu_provider

BOTH = ["cpu", "openvino"]
ALL = ["cpu", "openvino", "openvino-runtime"]


def _row(ms1: float, ms8: float, ok: bool = True, file: str = "fp32") -> dict[str, Any]:
    return {"file": file, "latency_ms": {"1": ms1, "8": ms8}, "within_budget": ok}


def _ref(tmp_path: Path, providers: dict[str, Any] | None) -> zoo.ModelRef:
    card: dict[str, Any] = {"dataset": "synthetic"}
    if providers is not None:
        card["export"] = {"providers": providers}
    for precision in ("fp32", "int8"):
        make_segmenter(tmp_path / f"m-{precision}.onnx", segmenter_info(precision=precision, card=card))
    return zoo.ModelRef("m", {p: tmp_path / f"m-{p}.onnx" for p in ("fp32", "int8")})


def test_unmeasured_openvino_means_the_cpu_ep(tmp_path: Path) -> None:
    assert _auto_cpu_provider(_ref(tmp_path, None), BOTH, "auto", 1) == "cpu"
    cpu_only = {"cpu": {"precisions": {"fp32": _row(5, 40)}}, "openvino": {"precisions": {}}}
    assert _auto_cpu_provider(_ref(tmp_path, cpu_only), BOTH, "auto", 1) == "cpu"


def test_the_faster_provider_per_batch_size_within_budget(tmp_path: Path) -> None:
    providers = {
        "cpu": {"precisions": {"fp32": _row(6, 40), "int8": _row(5, 39, file="int8")}},
        "openvino": {"precisions": {"fp32": _row(7, 30), "int8": _row(2, 10, ok=False, file="int8")}},
    }
    ref = _ref(tmp_path, providers)
    assert _auto_cpu_provider(ref, BOTH, "auto", 1) == "cpu"  # 5 ms int8 on cpu beats 7 ms fp32 there
    assert (
        _auto_cpu_provider(ref, BOTH, "auto", 8) == "openvino"
    )  # 30 ms fp32 beats 39; int8 there is over budget
    assert ref.choose("auto", "openvino", 8).precision == "fp32"


def test_openvino_runtime_taken_where_measured_fastest_and_accurate(tmp_path: Path) -> None:
    providers = {
        "cpu": {"precisions": {"fp32": _row(6, 40), "int8": _row(5, 39, file="int8")}},
        "openvino": {"precisions": {"fp32": _row(7, 30)}},
        "openvino-runtime": {"precisions": {"fp32": _row(6.5, 35), "int8": _row(4, 28, file="int8")}},
    }
    ref = _ref(tmp_path, providers)
    assert _auto_cpu_provider(ref, ALL, "auto", 1) == "openvino-runtime"
    assert ref.choose("auto", "openvino-runtime", 1).precision == "int8"
    # not installed here: never chosen, whatever the card says
    assert _auto_cpu_provider(ref, BOTH, "auto", 1) == "cpu"
    # over budget there: its int8 is never the reason to go there
    providers["openvino-runtime"]["precisions"]["int8"]["within_budget"] = False
    assert _auto_cpu_provider(_ref(tmp_path, providers), ALL, "auto", 1) == "cpu"


def test_unmeasured_openvino_runtime_is_not_a_guess(tmp_path: Path) -> None:
    cpu_only = {"cpu": {"precisions": {"fp32": _row(5, 40)}}}
    assert _auto_cpu_provider(_ref(tmp_path, cpu_only), ALL, "auto", 1) == "cpu"
    # OpenVINO's runtime alone (no onnxruntime): it is the engine there is
    assert _auto_cpu_provider(_ref(tmp_path, None), ["openvino-runtime"], "auto", 1) == "openvino-runtime"
    assert _ref(tmp_path, None).choose("auto", "openvino-runtime", 1).precision == "fp32"


def _openvino_runtime_fastest() -> dict[str, Any]:
    return {
        "cpu": {"precisions": {"fp32": _row(6, 40)}},
        "openvino-runtime": {"precisions": {"fp32": _row(3, 20)}},
    }


def test_a_run_that_ends_on_the_cpu_ep_never_imports_openvino(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pytest

    from segen_edge import openvino_runtime

    if not openvino_runtime.installed():
        pytest.skip("needs the openvino package installed to show it is not imported")
    cpu_fastest = {
        "cpu": {"precisions": {"fp32": _row(3, 20)}},
        "openvino-runtime": {"precisions": {"fp32": _row(6, 40)}},
    }
    for name, providers, imported in (("cpu", cpu_fastest, False), ("ov", _openvino_runtime_fastest(), True)):
        folder = tmp_path / name
        folder.mkdir()
        _ref(folder, providers)
        code = (
            "import sys, segen_edge; "
            f"m = segen_edge.load({str(folder / 'm-fp32.onnx')!r}, batch_size=1); "
            "print(m.provider, 'openvino' in sys.modules)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["openvino-runtime" if imported else "cpu", str(imported)]


def test_an_installed_but_broken_openvino_is_passed_over(tmp_path: Path, monkeypatch) -> None:
    from segen_edge import loading, openvino_runtime

    monkeypatch.setattr(openvino_runtime, "installed", lambda: True)
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    _ref(tmp_path, _openvino_runtime_fastest())
    model = loading.load(str(tmp_path / "m-fp32.onnx"), batch_size=1)
    assert model.provider == "cpu"


def test_a_file_or_precision_the_user_fixed_still_runs_where_it_is_fastest(tmp_path: Path) -> None:
    """`-m path/m-int8.onnx` or `-p int8` fixes the file, not the engine: auto takes the
    engine the card times that very file fastest on, among those where it passed its check."""
    providers = {
        "cpu": {"precisions": {"fp32": _row(3, 20), "int8": _row(6, 40, file="int8")}},
        "openvino-runtime": {"precisions": {"fp32": _row(5, 30), "int8": _row(4, 25, file="int8")}},
    }
    ref = _ref(tmp_path, providers)
    assert _auto_cpu_provider(ref, ALL, "auto", 1) == "cpu"  # free to choose: fp32 on the CPU EP
    assert _auto_cpu_provider(ref, ALL, "int8", 1) == "openvino-runtime"
    named = zoo.resolve(str(tmp_path / "m-int8.onnx"), "segment")
    assert _auto_cpu_provider(named, ALL, "auto", 1) == "openvino-runtime"
    assert named.choose("auto", "openvino-runtime", 1).latency_ms == 4
    providers["openvino-runtime"]["precisions"]["int8"]["within_budget"] = False  # broken there
    ref = _ref(tmp_path, providers)
    assert _auto_cpu_provider(ref, ALL, "int8", 1) == "cpu"
    assert _auto_cpu_provider(zoo.resolve(str(tmp_path / "m-int8.onnx"), "segment"), ALL, "auto", 1) == "cpu"


def test_a_short_job_weighs_each_engines_cold_start(tmp_path: Path) -> None:
    """One photo: OpenVINO's faster runs do not pay for its slower start; a long job's do."""
    from segen_edge import loading

    def row(ms: float, cold: float | None) -> dict[str, Any]:
        return {**_row(ms, ms), **({"cold_ms": cold} if cold is not None else {})}

    providers = {
        "cpu": {"precisions": {"fp32": row(10, 300)}},
        "openvino-runtime": {"precisions": {"fp32": row(5, 600)}},
        # where onnxruntime-openvino is installed its EP is an engine too: measured, slower
        "openvino": {"precisions": {"fp32": row(8, 700)}},
    }
    ref = _ref(tmp_path, providers)
    engines = ["cpu", "openvino-runtime"]
    assert loading._for_job(ref, engines, "auto", 1, runs=1) == ["cpu"]  # 310 against 605 ms
    assert loading._for_job(ref, engines, "auto", 1, runs=64) == ["openvino-runtime"]  # 940 / 920
    assert loading._for_job(ref, engines, "auto", 1, runs=None) == engines  # a job of unknown length
    assert loading._for_job(ref, engines, "auto", 1, runs=loading.FEW_RUNS + 1) == engines
    model = loading.load(str(tmp_path / "m-fp32.onnx"), runs=1)
    assert model.provider == "cpu"
    providers["openvino-runtime"]["precisions"]["fp32"].pop("cold_ms")  # not measured there
    assert loading._for_job(_ref(tmp_path, providers), engines, "auto", 1, runs=1) == engines
