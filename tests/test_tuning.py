"""`segen-edge tune`: this machine's timings, and `auto` choosing from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import generator_info, make_generator, make_segmenter, segmenter_info
from typer.testing import CliRunner

from segen_edge import load, tuning, zoo
from segen_edge.cli import app
from segen_edge.pipeline import cpu_count


@pytest.fixture(autouse=True)
def _own_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test its own cache folder: a record made here must not steer other tests."""
    monkeypatch.setenv("SEGEN_EDGE_CACHE", str(tmp_path / "cache"))


def _row(file: str, ok: bool = True, bf16: bool = False) -> dict[str, Any]:
    return {"file": file, "latency_ms": {"1": 1.0, "8": 8.0}, "within_budget": ok, "bf16": bf16}


def _family(folder: Path, providers: dict[str, Any] | None = None, variant: bool = False) -> zoo.ModelRef:
    """m-fp32.onnx and m-int8.onnx (and m-int8.openvino.onnx) whose card holds `providers`
    (default: both files checked on the CPU EP; {}: nothing checked anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    if providers is None:
        providers = {"cpu": {"precisions": {"fp32": _row("fp32"), "int8": _row("int8")}}}
    card: dict[str, Any] = {"dataset": "synthetic"}
    if providers:
        card["export"] = {"providers": providers}
    for precision in ("fp32", "int8"):
        make_segmenter(folder / f"m-{precision}.onnx", segmenter_info(precision=precision, card=card))
    if variant:
        make_segmenter(folder / "m-int8.openvino.onnx", segmenter_info(precision="int8", card=card))
    return zoo.resolve(str(folder / "m-fp32.onnx"), "segment")


def _fake_record(ref: zoo.ModelRef, rows: list[tuple[Any, ...]]) -> None:
    """A record as tune() writes it, with chosen timings (provider, file, batch, ms[, threads])."""
    found = tuning.candidates(ref, ["cpu", "openvino"])
    key = tuning.record_key(found)
    assert key is not None
    timings = [
        {
            "provider": p,
            "precision": f.split(".")[0],
            "file": f,
            "batch": b,
            "p50_ms": ms,
            "threads": more[0] if more else 1,
        }
        for p, f, b, ms, *more in rows
    ]
    tuning._write_record(key, {"model": ref.name, "timings": timings})


def _ids(found: list[tuning.Candidate]) -> set[tuple[str, str]]:
    return {(c.provider, c.file) for c in found}


def test_only_what_passed_its_check_on_a_provider_is_a_candidate(tmp_path: Path) -> None:
    providers = {
        "cpu": {"precisions": {"fp32": _row("fp32"), "int8": _row("int8")}},
        "openvino": {
            "precisions": {
                "fp32": _row("fp32"),
                "int8": _row("int8", ok=False),  # the CPU-tuned file fails under OpenVINO
                "int8.openvino": _row("int8.openvino"),
            }
        },
    }
    ref = _family(tmp_path / "a", providers, variant=True)
    assert _ids(tuning.candidates(ref, ["cpu", "openvino"])) == {
        ("cpu", "fp32"),
        ("cpu", "int8"),
        ("openvino", "fp32"),
        ("openvino", "int8.openvino"),
    }
    # no per-provider rows at all: fp32 everywhere; the unchecked int8 sibling nowhere...
    bare = _family(tmp_path / "b", {})
    assert _ids(tuning.candidates(bare, ["cpu", "openvino"])) == {("cpu", "fp32"), ("openvino", "fp32")}
    # ...unless it is the file the user named, and then on the CPU EP only
    named = zoo.resolve(str(tmp_path / "b" / "m-int8.onnx"), "segment")
    assert _ids(tuning.candidates(named, ["cpu", "openvino"])) == {
        ("cpu", "fp32"),
        ("cpu", "int8"),
        ("openvino", "fp32"),
    }


def test_auto_takes_the_fastest_timed_here_per_batch_size(tmp_path: Path) -> None:
    ref = _family(tmp_path / "m")
    _fake_record(
        ref,
        [
            ("cpu", "fp32", 1, 5.0),
            ("cpu", "int8", 1, 3.0),
            ("cpu", "fp32", 8, 30.0),
            ("cpu", "int8", 8, 41.0),
        ],
    )
    one = load(str(tmp_path / "m" / "m-fp32.onnx"), device="cpu", precision="auto", batch_size=1)
    eight = load(str(tmp_path / "m" / "m-fp32.onnx"), device="cpu", precision="auto", batch_size=8)
    assert (one.path.name, eight.path.name) == ("m-int8.onnx", "m-fp32.onnx")
    # a fixed precision with a fixed device is the user's choice: the record is not read
    fixed = load(str(tmp_path / "m" / "m-fp32.onnx"), device="cpu", precision="fp32", batch_size=1)
    assert fixed.path.name == "m-fp32.onnx"


def test_one_call_on_every_core_and_lanes_of_one_thread_are_told_apart(tmp_path: Path) -> None:
    ref = _family(tmp_path / "m")
    _fake_record(
        ref,
        [
            ("cpu", "fp32", 1, 5.0, 1),
            ("cpu", "int8", 1, 3.0, 1),  # one thread: int8 wins
            ("cpu", "fp32", 1, 1.5, 2),  # two threads: fp32 scales better
            ("cpu", "int8", 1, 2.5, 2),
            ("cpu", "fp32", 8, 30.0, 1),
            ("cpu", "int8", 8, 20.0, 1),
        ],
    )
    assert tuning.best(ref, ["cpu"], 1, threads=1)[0].file == "int8"  # type: ignore[index]
    assert tuning.best(ref, ["cpu"], 1, threads=2)[0].file == "fp32"  # type: ignore[index]
    # batch 8 was timed on one thread only: those figures stand for any thread count
    assert tuning.best(ref, ["cpu"], 8, threads=2)[0].file == "int8"  # type: ignore[index]


def test_a_timing_of_a_file_that_failed_its_check_is_never_taken(tmp_path: Path) -> None:
    providers = {"cpu": {"precisions": {"fp32": _row("fp32"), "int8": _row("int8", ok=False)}}}
    ref = _family(tmp_path / "m", providers)
    _fake_record(ref, [("cpu", "fp32", 1, 9.0), ("cpu", "int8", 1, 1.0)])
    assert tuning.best(ref, ["cpu"], 1) == (tuning.Candidate("cpu", "fp32", "fp32", ref.files["fp32"]), 9.0)


def test_a_changed_model_is_timed_afresh(tmp_path: Path) -> None:
    ref = _family(tmp_path / "m")
    _fake_record(ref, [("cpu", "fp32", 1, 5.0), ("cpu", "int8", 1, 3.0)])
    assert tuning.best(ref, ["cpu"], 1) is not None
    make_segmenter(ref.files["int8"], segmenter_info(precision="int8", name="changed"))
    assert tuning.best(zoo.resolve(str(ref.files["fp32"]), "segment"), ["cpu"], 1) is None


def test_tune_times_real_sessions_and_records_the_fastest(tmp_path: Path) -> None:
    ref = _family(tmp_path / "m")
    timings, record = tuning.tune(ref, ["cpu"], batches=(1, 2), runs=3, warmup=1)
    assert record is not None and record.is_file()
    one_thread = {(t.file, t.batch) for t in timings if t.threads == 1}
    assert one_thread == {("fp32", 1), ("int8", 1), ("fp32", 2), ("int8", 2)}
    every_core = {(t.file, t.batch, t.threads) for t in timings if t.threads != 1}
    cores = cpu_count()
    assert every_core == ({("fp32", 1, cores), ("int8", 1, cores)} if cores > 1 else set())
    assert all(t.p50_ms > 0 for t in timings)
    fastest = min((t for t in timings if t.batch == 2), key=lambda t: t.p50_ms)
    chosen = tuning.best(ref, ["cpu"], 2)
    assert chosen is not None and (chosen[0].file, chosen[1]) == (fastest.file, fastest.p50_ms)
    on_all = min(
        (t for t in timings if t.batch == 1 and t.threads == cores), key=lambda t: t.p50_ms, default=None
    )
    if on_all is not None:
        chosen = tuning.best(ref, ["cpu"], 1, threads=None)
        assert chosen is not None and chosen[1] == on_all.p50_ms


def test_cli_tune_marks_one_choice_per_batch(tmp_path: Path) -> None:
    ref = _family(tmp_path / "m")
    result = CliRunner().invoke(
        app, ["tune", "-m", str(ref.files["fp32"]), "-b", "1,4", "--runs", "3", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["batch"] for r in rows} == {1, 4}
    for batch, threads in {(r["batch"], r["threads"]) for r in rows}:
        at = [r for r in rows if (r["batch"], r["threads"]) == (batch, threads)]
        chosen = [r for r in at if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["p50_ms"] == min(r["p50_ms"] for r in at)


def _with_int8_beside(folder: Path, task: str, weight: np.ndarray | None = None) -> zoo.ModelRef:
    """A tiny model of `task` as a user of another quantizer has it: `m-fp32.onnx` with an
    `m-int8.onnx` beside it that no card has checked; `weight`, when given, replaces the
    int8 file's weights (a broken quantization)."""
    import onnx
    from onnx import numpy_helper

    make, info = (make_generator, generator_info) if task == "generate" else (make_segmenter, segmenter_info)
    folder.mkdir()
    make(folder / "m-fp32.onnx", info())
    int8 = make(folder / "m-int8.onnx", info(precision="int8"))
    if weight is not None:
        proto = onnx.load(str(int8))
        tensor = next(t for t in proto.graph.initializer if t.name == "w")
        tensor.CopyFrom(numpy_helper.from_array(weight, "w"))
        onnx.save(proto, str(int8))
    return zoo.resolve(str(folder / "m-fp32.onnx"), task)


def test_tune_checks_a_segmenters_unchecked_int8_on_the_users_images(tmp_path: Path) -> None:
    """An int8 file beside the user's fp32 segmenter (another tool's, no card) is timed only
    once `tune --data` has checked it on their images: where it agrees with fp32, not where
    it swaps the classes."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    timed = {}
    swapped = np.roll(np.eye(3, dtype=np.float32), 1, axis=1)  # every pixel gets another class
    for name, broken in (("good", False), ("bad", True)):
        ref = _with_int8_beside(tmp_path / name, "segment", swapped if broken else None)
        without, _ = tuning.tune(ref, ["cpu"], batches=(1,), runs=3)
        assert {(t.provider, t.file) for t in without} == {("cpu", "fp32")}  # nothing checked it
        timings, record = tuning.tune(ref, ["cpu"], batches=(1,), runs=3, images=photos)
        timed[name] = {(t.provider, t.file) for t in timings}
        assert record is not None
        (entry,) = [e for e in json.loads(record.read_text())["models"].values() if e["model"] == ref.name]
        (check,) = entry["checked"]
        assert check["on"] == f"5 images of {photos}" and check["within_budget"] is (not broken)
        assert (check["agreement"] == 1.0) is (not broken)
        again, _ = tuning.tune(ref, ["cpu"], batches=(1,), runs=3)  # the check stands without --data
        assert {(t.provider, t.file) for t in again} == timed[name]
    assert ("cpu", "int8") in timed["good"]
    assert timed["bad"] == {("cpu", "fp32")}


def test_tune_data_must_be_a_folder_of_images(seg_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["tune", "-m", str(seg_model), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a folder of images" in result.output
    (tmp_path / "empty").mkdir()
    ref = _with_int8_beside(tmp_path / "fam", "segment")
    result = CliRunner().invoke(
        app, ["tune", "-m", str(ref.files["fp32"]), "--data", str(tmp_path / "empty")]
    )
    assert result.exit_code != 0 and "no readable images" in str(result.exception or result.output)


def test_tune_checks_a_generators_unchecked_int8_on_seeded_latents(tmp_path: Path) -> None:
    """A generator's sibling int8 file without a card is checked against fp32 on seeded
    latents (its very inputs) and timed only where its images match; a broken one never."""
    timed = {}
    for name, broken in (("good", False), ("bad", True)):
        zeroed = np.zeros((4, 64), np.float32)  # every image mid-grey
        ref = _with_int8_beside(tmp_path / name, "generate", zeroed if broken else None)
        assert _ids(tuning.candidates(ref, ["cpu"])) == {("cpu", "fp32")}  # nothing checked it
        timings, _ = tuning.tune(ref, ["cpu"], batches=(1,), runs=3)
        timed[name] = {(t.provider, t.file) for t in timings}
        found = tuning.best(ref, ["cpu"], 1)
        assert found is not None and (found[0].file == "int8") <= (not broken)
    assert ("cpu", "int8") in timed["good"]
    assert timed["bad"] == {("cpu", "fp32")}
