"""The output plan (issue 17): every input and output seen, and clashes settled, before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import solid

from segen_edge.errors import BadInputError
from segen_edge.files import find_images
from segen_edge.plan import NAME_MAX, OutputPlan, PlanError, Planned

RED = (255, 0, 0)


def plan(inputs: list[Path | str], out: Path, kinds: tuple[str, ...] = ("mask",), **kw: object) -> OutputPlan:
    return OutputPlan.build([str(i) for i in inputs], out, kinds, **kw)  # type: ignore[arg-type]


def targets(p: OutputPlan) -> dict[str, dict[str, Path]]:
    return {e.source.path.name: e.targets for e in p.entries if isinstance(e, Planned)}


def assert_sound(p: OutputPlan) -> None:
    """No two outputs share a path, none is an input, all are under --out."""
    outputs = [os.path.realpath(o) for o in p.outputs()]
    assert len(outputs) == len(set(outputs))
    inputs = {os.path.realpath(e.source.path) for e in p.entries if isinstance(e, Planned)}
    assert not inputs & set(outputs)
    out = os.path.realpath(p.out_dir)
    assert all(o.startswith(out + os.sep) for o in outputs)


def test_suffix_clash_a_jpg_beside_a_color_jpg(tmp_path: Path) -> None:
    solid(tmp_path / "in" / "a.jpg", RED)
    solid(tmp_path / "in" / "a.color.jpg", RED)
    p = plan([tmp_path / "in"], tmp_path / "out", ("mask", "color"))
    assert_sound(p)
    assert len(p.outputs()) == 4  # four outputs, four files


@pytest.mark.parametrize("order", [("a.jpg", "a.png"), ("a.png", "a.jpg")])
def test_equal_stems_get_names_that_do_not_depend_on_argument_order(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    for name in order:
        solid(tmp_path / "in" / name, RED)
    p = plan([tmp_path / "in" / n for n in order], tmp_path / "out")
    assert_sound(p)
    assert [e.source.path.name for e in p.entries] == list(order)  # results stay in input order
    named = targets(p)
    assert named["a.jpg"]["mask"].name == "a.png" and named["a.png"]["mask"].name == "a_png.png"


def test_out_a_parent_of_the_input_folder_never_lands_on_an_input(tmp_path: Path) -> None:
    root = tmp_path / "p"
    solid(root / "in" / "x.png", RED)
    solid(root / "in" / "in" / "x.png", RED)  # mirrored to p/in/x.png: an input
    p = plan([root / "in"], root, recursive=True)
    assert_sound(p)
    (inner,) = [e.targets for e in p.entries if isinstance(e, Planned) and e.source.rel == Path("in/x.png")]
    assert inner["mask"] == root / "in" / "x.mask.png"  # in a scanned folder: a name scans skip
    (outer,) = [e.targets for e in p.entries if isinstance(e, Planned) and e.source.rel == Path("x.png")]
    assert outer["mask"] == root / "x.png"


def test_glob_with_dotdot_after_a_wildcard_is_refused(tmp_path: Path) -> None:
    solid(tmp_path / "photos" / "a" / "x.png", RED)
    solid(tmp_path / "elsewhere" / "y.png", RED)
    pattern = str(tmp_path / "photos" / "*" / ".." / ".." / "elsewhere" / "*.png")
    with pytest.raises(PlanError, match="outside --out"):
        plan([pattern], tmp_path / "out")


def test_summary_and_json_targets_are_checked(tmp_path: Path) -> None:
    photo = solid(tmp_path / "in" / "a.png", RED)
    out = tmp_path / "out"
    with pytest.raises(PlanError, match="is an input"):
        plan([tmp_path / "in"], out, reserved={"--summary": photo})
    with pytest.raises(PlanError, match="is where an output goes"):
        plan([tmp_path / "in"], out, reserved={"--summary": out / "a.png"})
    other = solid(tmp_path / "holiday.jpg", RED)
    with pytest.raises(PlanError, match=r"not a \.json file"):
        plan([tmp_path / "in"], out, reserved={"--summary": other})
    with pytest.raises(PlanError, match="also given to"):
        plan(
            [tmp_path / "in"], out, reserved={"--summary": tmp_path / "s.json", "--json": tmp_path / "s.json"}
        )
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.json")
        with pytest.raises(PlanError, match="not a regular file"):
            plan([tmp_path / "in"], out, reserved={"--summary": tmp_path / "pipe.json"})
    (tmp_path / "old.json").write_text("{}")
    plan([tmp_path / "in"], out, reserved={"--summary": tmp_path / "old.json"})  # a JSON file: replaced


def test_long_names_get_short_unique_output_names(tmp_path: Path) -> None:
    stems = ["a" * 240, "a" * 239 + "b", "é" * 120]  # 240 bytes each
    for stem in stems:
        solid(tmp_path / "in" / f"{stem}.png", RED)
    p = plan([tmp_path / "in"], tmp_path / "out", ("mask", "overlay", "prob"))
    assert_sound(p)
    assert all(len(os.fsencode(o.name)) <= NAME_MAX for o in p.outputs())
    again = plan([tmp_path / "in"], tmp_path / "out", ("mask", "overlay", "prob"))
    assert again.outputs() == p.outputs()  # the same names on every run


def test_out_naming_a_png_with_one_input_is_that_file(tmp_path: Path) -> None:
    solid(tmp_path / "a.jpg", RED)
    solid(tmp_path / "b.jpg", RED)
    p = plan([tmp_path / "a.jpg"], tmp_path / "mask.png", ("mask", "color"))
    assert p.single_file and targets(p)["a.jpg"] == {
        "mask": tmp_path / "mask.png",
        "color": tmp_path / "mask.color.png",
    }
    with pytest.raises(PlanError, match="names one file, but the inputs hold 2 images"):
        plan([tmp_path / "a.jpg", tmp_path / "b.jpg"], tmp_path / "mask.png")
    with pytest.raises(PlanError, match="outputs are PNG"):
        plan([tmp_path / "a.jpg"], tmp_path / "mask.jpg")


def test_out_blocked_by_a_file_is_refused(tmp_path: Path) -> None:
    solid(tmp_path / "in" / "a.png", RED)
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(PlanError, match="is a file, not a folder"):
            plan([tmp_path / "in"], out)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("-", "stdin is not supported"),
        ("https://example.com/cat.jpg", "URLs are not supported"),
        ("HTTP://example.com/cat.jpg", "URLs are not supported"),
    ],
)
def test_unsupported_inputs_are_named(arg: str, expected: str) -> None:
    with pytest.raises(BadInputError, match=expected):
        list(find_images([arg]))


@pytest.mark.parametrize("suffix", [".mp4", ".MOV", ".avi", ".mkv", ".webm"])
def test_video_files_are_named_as_video(tmp_path: Path, suffix: str) -> None:
    clip = tmp_path / f"clip{suffix}"
    clip.write_bytes(b"\0\0\0\x18ftypmp42")
    with pytest.raises(BadInputError, match=r"video is not supported; extract frames first, e\.g\. with"):
        list(find_images([clip]))
    (tmp_path / "a.png").write_bytes(b"")
    assert [s.path.name for s in find_images([tmp_path])] == ["a.png"]  # in a folder: not an image, ignored


def test_outputs_a_manifest_records_are_never_inputs(tmp_path: Path) -> None:
    from segen_edge.manifest import Manifest

    folder = tmp_path / "photos"
    solid(folder / "a.png", RED)
    solid(folder / "sub" / "made.png", RED)
    manifest = Manifest(folder)
    manifest.append(
        {
            "type": "done",
            "input": "/x/a.jpg",
            "base": "sub/made",
            "outputs": {"mask": "sub/made.png"},
            "key": "k",
        }
    )
    manifest.close()
    assert sorted(s.rel.as_posix() for s in find_images([folder], recursive=True)) == ["a.png"]
    assert [s.rel.as_posix() for s in find_images([str(folder / "*" / "*.png")])] == []
