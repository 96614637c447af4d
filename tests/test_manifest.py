"""The manifest (issue 17): re-runs know what is done, attribute nothing wrongly, rewrite nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_segmenter, segmenter_info, solid
from PIL import Image

import segen_edge
from segen_edge.manifest import MANIFEST_NAME, Manifest
from segen_edge.plan import PlanError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> segen_edge.Segmenter:
    path = make_segmenter(tmp_path_factory.mktemp("m") / "tiny.onnx", segmenter_info())
    return segen_edge.load_segmenter(str(path), device="cpu")


def run(
    seg: segen_edge.Segmenter, inputs: list[Path], out: Path, **kw: object
) -> dict[str, segen_edge.ImageResult]:
    report = segen_edge.segment_files(seg, [str(i) for i in inputs], out, lanes=1, **kw)  # type: ignore[arg-type]
    return {r.path.name: r for r in report.results}


def mask_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_manifest_lines_fold_last_wins_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.append({"type": "claim", "input": "/a.jpg", "base": "a", "outputs": {"mask": "a.png"}, "key": "k"})
    m.append({"type": "done", "input": "/a.jpg", "base": "a", "outputs": {"mask": "a.png"}, "key": "k"})
    m.append({"type": "done", "input": "/b.jpg", "base": "a", "outputs": {"mask": "a.png"}, "key": "k"})
    m.close()
    with open(tmp_path / MANIFEST_NAME, "ab") as fh:
        fh.write(b'{"v": 1, "type": "done", "inp')  # killed mid-append
    again = Manifest.load(tmp_path)  # what any other process reads
    owner = again.owner("a.png")
    assert owner is not None and owner.input == "/b.jpg" and owner.state == "done"
    assert again.inputs["/a.jpg"].outputs == {}  # no longer credited with b's output


def test_adding_a_kind_writes_only_that_kind(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    photo = solid(tmp_path / "in" / "a.png", GREEN)
    out = tmp_path / "out"
    first = run(seg, [photo], out)
    assert first["a.png"].status == "ok"
    edited = np.zeros((20, 30), np.uint8)  # a mask fixed by hand
    Image.fromarray(edited).save(out / "a.png")
    stamp = (out / "a.png").stat().st_mtime_ns
    second = run(seg, [photo], out, save=["mask", "color"])
    result = second["a.png"]
    assert result.status == "ok" and result.written == [out / "a.color.png"]
    assert (out / "a.png").stat().st_mtime_ns == stamp and (mask_of(out / "a.png") == 0).all()
    assert (mask_of(out / "a.color.png") == GREEN).all()
    assert run(seg, [photo], out, save=["mask", "color"])["a.png"].status == "skipped"


def test_inputs_added_and_reordered_keep_their_own_outputs(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    png = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    run(seg, [png], out)
    assert (mask_of(out / "a.png") == 0).all()
    jpg = solid(tmp_path / "in" / "a.jpg", BLUE)  # sorts first: a fresh run would give it a.png
    results = run(seg, [jpg, png], out)
    assert results["a.png"].status == "skipped" and results["a.png"].outputs == [out / "a.png"]
    assert results["a.jpg"].status == "ok" and results["a.jpg"].outputs == [out / "a_jpg.png"]
    assert (mask_of(out / "a.png") == 0).all() and (mask_of(out / "a_jpg.png") == 2).all()
    reordered = run(seg, [png, jpg], out)
    assert {n: (r.status, r.outputs) for n, r in reordered.items()} == {
        "a.png": ("skipped", [out / "a.png"]),
        "a.jpg": ("skipped", [out / "a_jpg.png"]),
    }
    assert reordered["a.jpg"].fractions == {"red": 0.0, "green": 0.0, "blue": 1.0}  # from the manifest


def test_removed_input_keeps_its_name_from_a_newcomer(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    png = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    run(seg, [png], out)
    png.unlink()
    jpg = solid(tmp_path / "in" / "a.jpg", BLUE)
    results = run(seg, [tmp_path / "in"], out)
    assert results["a.jpg"].outputs == [out / "a_jpg.png"]  # a.png is the removed input's
    assert (mask_of(out / "a.png") == 0).all()
    assert jpg.exists()


def test_another_model_or_settings_is_refused_then_redone_with_overwrite(
    seg: segen_edge.Segmenter, tmp_path: Path
) -> None:
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    run(seg, [photo], out, save=["mask", "overlay"], alpha=0.5)
    before = (out / "a.png").read_bytes()
    with pytest.raises(
        PlanError, match=r"made by another run than this one \(alpha 0.5 -> 0.8\); pass --overwrite"
    ):
        run(seg, [photo], out, save=["mask", "overlay"], alpha=0.8)
    assert run(seg, [photo], out, save=["mask"], alpha=0.8)["a.png"].status == "skipped"  # masks ignore alpha
    other = segen_edge.load_segmenter(
        str(
            make_segmenter(tmp_path / "other.onnx", segmenter_info(name="other", class_names=("r", "g", "b")))
        ),
        device="cpu",
    )
    with pytest.raises(PlanError, match=r"model tiny.onnx \(sha256 \w+\) -> other.onnx"):
        run(other, [photo], out)
    assert (out / "a.png").read_bytes() == before  # refused before any work
    redone = run(other, [photo], out, overwrite=True)
    assert redone["a.png"].status == "ok"


def test_changed_input_is_refused_without_overwrite(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    run(seg, [photo], out)
    solid(photo, BLUE, (7, 7))
    with pytest.raises(PlanError, match="changed since"):
        run(seg, [photo], out)
    assert (mask_of(out / "a.png") == 0).all()
    assert (mask_of(run(seg, [photo], out, overwrite=True)["a.png"].outputs[0]) == 2).all()


def test_foreign_file_is_refused_and_nothing_written(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    solid(out / "a.png", GREEN)  # not made by segen-edge for this input
    with pytest.raises(PlanError, match="does not record them as outputs of these inputs"):
        run(seg, [photo], out)
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no manifest either


def test_interrupted_write_is_redone(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    run(seg, [photo], out)
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["run", "claim", "done"]
    (out / MANIFEST_NAME).write_text("\n".join(lines[:2]) + "\n")  # killed after the claim
    assert run(seg, [photo], out)["a.png"].status == "ok"  # redone, not taken as done


def test_a_manifest_that_is_not_a_file_is_refused(seg: segen_edge.Segmenter, tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / MANIFEST_NAME)
    with pytest.raises(segen_edge.BadInputError, match="not a regular file"):
        run(seg, [photo], out)
