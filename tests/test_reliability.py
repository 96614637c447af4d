"""Reliability (issue 7): a corrupted folder, broken models, and interrupted runs lose nothing.

The CLI runs as users run it: through `cli.main` (which maps SegenError to one line and
exit 1) inside CliRunner's isolation, or as a real subprocess that the tests interrupt with
SIGINT, SIGTERM and SIGKILL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import _save, generator_info, make_segmenter, segmenter_info, solid
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from segen_edge import cli

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CLASS_OF = {RED: 0, GREEN: 1, BLUE: 2}  # the tiny segmenter picks the strongest channel


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def segen(*args: str | Path) -> Run:
    """`segen-edge ARGS` in-process, through the real entry point `cli.main`.

    Any exception that escapes main (a traceback for the user) fails the test.
    """
    with CliRunner().isolation() as (out, err, _):
        code = cli.main([str(a) for a in args])
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    assert "Traceback" not in stderr, stderr
    return Run(code, stdout, stderr)


def load_summary(path: Path) -> dict[str, dict]:
    document = json.loads(path.read_text())
    return {Path(e["input"]).as_posix(): e for e in document["images"]} | {"": document}


def assert_whole_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray(img)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height: a decompression bomb as far as the header says."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- the corrupted folder ----------------------------------------------------------------


@dataclass
class Folder:
    root: Path
    good: dict[str, tuple[int | None, tuple[int, int]]]  # rel -> (class id or None, mask size)
    bad: dict[str, str]  # rel -> a word the error line must contain
    note: set[str]  # rels that get a note (animated)


def build_corrupted_folder(root: Path) -> Folder:
    """Good images of every mode beside every kind of bad input issue 7 lists."""
    good: dict[str, tuple[int | None, tuple[int, int]]] = {}

    def add(rel: str, colour: tuple[int, int, int] | None, size: tuple[int, int], img: Image.Image) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **({"save_all": True} if "anim" in rel else {}))
        good[rel] = (CLASS_OF.get(colour) if colour else None, size)

    def rgb(colour: tuple[int, int, int], size: tuple[int, int] = (12, 18)) -> Image.Image:
        return Image.new("RGB", (size[1], size[0]), colour)

    add("red.png", RED, (12, 18), rgb(RED))
    add("green.jpg", GREEN, (12, 18), rgb(GREEN))
    add("a/dup.png", RED, (12, 18), rgb(RED))  # same stem in three places
    add("b/dup.png", GREEN, (12, 18), rgb(GREEN))
    add("a/dup.jpg", BLUE, (7, 9), rgb(BLUE, (7, 9)))
    add("modes/grey.png", None, (5, 6), Image.new("L", (6, 5), 90))
    add("modes/la.png", None, (5, 6), Image.new("LA", (6, 5), (90, 200)))
    add("modes/rgba.png", BLUE, (5, 6), Image.new("RGBA", (6, 5), (*BLUE, 255)))
    palette = Image.new("P", (6, 5), 1)
    palette.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    add("modes/palette.png", GREEN, (5, 6), palette)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    add("modes/palette_t.png", GREEN, (5, 6), palette_t)
    add("modes/wide16.png", None, (4, 7), Image.fromarray(np.full((4, 7), 40000, np.uint16)))
    add("modes/cmyk.jpg", RED, (8, 8), Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    add("formats/t.tif", GREEN, (6, 4), rgb(GREEN, (6, 4)))
    add("formats/w.webp", BLUE, (6, 4), rgb(BLUE, (6, 4)))
    add("formats/b.bmp", RED, (6, 4), rgb(RED, (6, 4)))
    add("formats/dot.png", RED, (1, 1), rgb(RED, (1, 1)))
    exif_img = rgb(RED, (10, 16))
    exif = exif_img.getexif()
    exif[0x0112] = 6
    exif_img.save(root / "exif6.jpg", exif=exif)
    good["exif6.jpg"] = (0, (16, 10))  # rotated: the mask has the displayed size
    anim_gif = rgb(GREEN)
    anim_gif.save(root / "anim.gif", save_all=True, append_images=[rgb(RED)], duration=50)
    good["anim.gif"] = (1, (12, 18))
    anim_webp = rgb(BLUE)
    anim_webp.save(root / "anim.webp", save_all=True, append_images=[rgb(RED)], duration=50, lossless=True)
    good["anim.webp"] = (2, (12, 18))

    bad: dict[str, str] = {}
    (root / "bad").mkdir()
    (root / "bad/empty.jpg").write_bytes(b"")
    bad["bad/empty.jpg"] = "empty file"
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for fmt, rel in (("JPEG", "bad/cut.jpg"), ("PNG", "bad/cut.png")):
        buffer = io.BytesIO()
        noise.save(buffer, format=fmt)
        (root / rel).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
        bad[rel] = "truncated"
    (root / "bad/letter.jpg").write_text("Dear user, this is not a photo.\n")
    bad["bad/letter.jpg"] = "not an image"
    (root / "bad/bomb.png").write_bytes(png_header_only(60_000, 60_000))
    bad["bad/bomb.png"] = "--max-pixels"
    (root / "bad/dead.png").symlink_to(root / "bad/nowhere.png")
    bad["bad/dead.png"] = "broken symlink"
    (root / "bad/loop.png").symlink_to(root / "bad/loop.png")
    bad["bad/loop.png"] = "symlink loop"
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "bad/pipe.png")
        bad["bad/pipe.png"] = "not a regular file"
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything
        solid(root / "bad/secret.png", RED).chmod(0)
        bad["bad/secret.png"] = "permission denied"

    # ignored without complaint: non-image files, folders named like images, folder loops,
    # and outputs of an earlier run
    (root / "notes.txt").write_text("not an image, not an image name")
    (root / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "folder.png").mkdir()
    (root / "a" / "up").symlink_to(root)
    solid(root / "old.mask.png", RED)
    return Folder(root, good, bad, {"anim.gif", "anim.webp"})


@pytest.fixture()
def corrupted(tmp_path: Path) -> Folder:
    return build_corrupted_folder(tmp_path / "in")


def test_corrupted_folder(corrupted: Folder, seg_model: Path, tmp_path: Path) -> None:
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    args = ("segment", corrupted.root, "-m", seg_model, "-o", out, "--recursive", "--device", "cpu")
    run = segen(*args, "--summary", summary, "--max-pixels", "1000000", "--batch-size", "3")
    assert run.code == 1, run.stderr

    # each bad file: exactly one error line, naming it and the reason; nothing else fails
    assert len(run.errors) == len(corrupted.bad), run.stderr
    for rel, reason in corrupted.bad.items():
        lines = [line for line in run.errors if str(corrupted.root / rel) + ":" in line]
        assert len(lines) == 1, (rel, run.errors)
        assert reason in lines[0], lines[0]
    for rel in corrupted.note:
        assert f"{rel}: animated (2 frames): used the first frame" in run.stderr
    assert (
        f"{len(corrupted.good)} segmented, 0 skipped (outputs exist), {len(corrupted.bad)} failed"
        in run.stderr
    )

    # every good image has its own mask, at its own (displayed) size, with the right class
    entries = load_summary(summary)
    document = entries.pop("")
    assert document["counts"] == {"ok": len(corrupted.good), "skipped": 0, "failed": len(corrupted.bad)}
    assert document["interrupted"] is False
    listed = {Path(k).relative_to(corrupted.root).as_posix(): v for k, v in entries.items()}
    assert set(listed) == set(corrupted.good) | set(corrupted.bad)  # the summary lists all
    masks = []
    for rel, (class_id, size) in corrupted.good.items():
        entry = listed[rel]
        assert entry["status"] == "ok", entry
        (mask_path,) = map(Path, entry["outputs"])
        assert out in mask_path.parents
        assert mask_path.parent == out / Path(rel).parent  # the input tree is mirrored
        mask = assert_whole_png(mask_path)
        assert mask.shape == size, rel
        if class_id is not None:
            assert (mask == class_id).all(), rel
        assert entry["size_hw"] == list(size)
        masks.append(mask_path)
    assert len(set(masks)) == len(masks)  # no two inputs share an output
    for rel in corrupted.bad:
        assert listed[rel]["status"] == "failed" and listed[rel]["error"]
    written = sorted(p for p in out.rglob("*") if p.is_file())
    # nothing else: no temporary files, no masks of bad inputs; the manifest says who made what
    assert written == sorted([*masks, out / "segen-manifest.jsonl"])

    # a re-run skips everything that is done; the bad files fail again
    before = {p: p.stat().st_mtime_ns for p in masks}
    again = segen(*args, "--summary", summary, "--max-pixels", "1000000")
    assert again.code == 1
    assert again.stdout == ""
    assert f"0 segmented, {len(corrupted.good)} skipped (outputs exist)" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in masks} == before
    assert load_summary(summary)[""]["counts"]["skipped"] == len(corrupted.good)

    # --overwrite writes them all again
    for p in masks:
        os.utime(p, ns=(1, 1))
    forced = segen(*args, "--overwrite", "--max-pixels", "1000000")
    assert f"{len(corrupted.good)} segmented, 0 skipped" in forced.stderr
    assert all(p.stat().st_mtime_ns != 1 for p in masks)

    # --max-pixels: a genuine 1.2 megapixel image fails under 1,000,000 and passes over it
    big = corrupted.root / "big.png"
    Image.new("RGB", (1200, 1000), GREEN).save(big, compress_level=1)
    small = segen(*args, "--max-pixels", "1000000")
    (line,) = [line for line in small.errors if "big.png" in line]
    assert "1200x1000 is 1,200,000 pixels, over the limit of 1,000,000" in line and "--max-pixels" in line
    raised = segen(*args, "--max-pixels", "2000000")
    assert not [line for line in raised.errors if "big.png" in line]
    assert (assert_whole_png(out / "big.png") == 1).all()
    assert len(raised.errors) == len(corrupted.bad)  # the bomb is still refused


def test_locked_subfolder_and_a_typo(
    corrupted: Folder, seg_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    base = ("segment", corrupted.root, "-m", seg_model, "-o", out, "--device", "cpu")
    typo = segen(*base, corrupted.root / "no-such-photo.jpg")
    assert typo.code == 1 and len(typo.errors) == 1 and "no-such-photo.jpg: no such file" in typo.errors[0]
    assert not out.exists()  # stopped before any work

    real_scandir = os.scandir
    locked = corrupted.root / "modes"

    def scandir(path: object) -> object:
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    run = segen(*base, "--recursive")
    assert run.code == 1
    lines = [line for line in run.errors if "modes" in line]
    assert lines == [f"error: {locked}: cannot list the folder (Permission denied); check its permissions"]
    expected_ok = len([rel for rel in corrupted.good if not rel.startswith("modes/")])
    assert f"{expected_ok} segmented" in run.stderr


def test_default_max_pixels_refuses_a_bomb_by_header(seg_model: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    run = segen("segment", tmp_path / "in", "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu")
    assert run.code == 1
    (line,) = run.errors
    assert "bomb.png: 100000x100000 is 10,000,000,000 pixels" in line and "--max-pixels" in line


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("by", ["folder", "glob", "files"])
def test_out_equal_to_input_never_overwrites_and_never_feeds_itself(
    seg_model: Path, tmp_path: Path, by: str
) -> None:
    folder = tmp_path / "photos"
    solid(folder / "red.png", RED)
    solid(folder / "red.jpg", GREEN)  # same stem, another suffix
    solid(folder / "blue.png", BLUE)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    inputs = _digest(folder)
    given = {
        "folder": [folder],
        "glob": [str(folder / "*.png"), str(folder / "*.jpg")],
        "files": sorted(folder.iterdir()),
    }[by]
    args = (
        "segment",
        *given,
        "-m",
        seg_model,
        "-o",
        folder,
        "--save",
        "mask,color,overlay",
        "--device",
        "cpu",
    )
    first = segen(*args)
    assert first.code == 1  # broken.png
    assert len(first.errors) == 1 and "broken.png" in first.errors[0]
    after = _digest(folder)
    assert {k: after[k] for k in inputs} == inputs  # no input touched
    made = sorted(set(after) - set(inputs) - {"segen-manifest.jsonl"})
    second_red = "red_png"  # red.jpg sorts first, whatever the argument order
    assert made == sorted(
        f"{stem}.{kind}.png" for stem in ("blue", "red", second_red) for kind in ("mask", "color", "overlay")
    )
    for name in made:
        assert_whole_png(folder / name)

    second = segen(*args)  # the outputs are not inputs now
    assert "0 segmented, 3 skipped (outputs exist), 1 failed" in second.stderr
    assert _digest(folder) == after


def test_unwritable_outputs_are_one_line_each(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    for target in (blocker, blocker / "sub"):  # a file at --out, or above it: refused up front
        run = segen("segment", photo_dir, "-m", seg_model, "-o", target, "--device", "cpu")
        line = _one_error_line(run)
        assert "is a file, not a folder; pick another --out" in line, line
    assert blocker.read_text() == "a file, not a folder"

    out = tmp_path / "out"
    (out / "red.png").mkdir(parents=True)  # a folder where an output goes: not "done"
    run = segen("segment", photo_dir, "-m", seg_model, "-o", out, "--device", "cpu")
    assert run.code == 1
    (line,) = run.errors
    assert line.startswith(f"error: {out / 'red.png'}: cannot write (Is a directory)"), line
    assert "2 segmented, 0 skipped (outputs exist), 1 failed" in run.stderr
    assert [p.name for p in out.iterdir() if p.name.endswith(".part")] == []
    (out / "red.png").rmdir()

    run = segen(
        "segment", photo_dir, "-m", seg_model, "-o", out, "--summary", blocker / "s.json", "--device", "cpu"
    )
    assert run.code == 1
    (line,) = run.errors
    assert "s.json: cannot write" in line
    assert len(list(out.glob("*.png"))) == 3  # the masks were written before the summary failed


# -- broken and mismatched models --------------------------------------------------------


def _fixed_shape_segmenter(path: Path, shape: list[int | str]) -> Path:
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image", "w"], ["logits"])], "g", [x], [y], [weight]
    )
    return _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, segmenter_info()
    )


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("odd-models")
    (folder / "text.onnx").write_text("this is not a model\n")
    (folder / "empty.onnx").write_bytes(b"")
    real = make_segmenter(folder / "real.onnx", segmenter_info())
    (folder / "half.onnx").write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    _fixed_shape_segmenter(folder / "fixed32.onnx", ["N", 32, 32, 3])
    _fixed_shape_segmenter(folder / "batch1.onnx", [1, 16, 16, 3])
    return folder


def _one_error_line(run: Run) -> str:
    assert run.code == 1, (run.code, run.stderr)
    assert len(run.errors) == 1, run.stderr
    assert run.stdout == ""
    return run.errors[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("text.onnx", "not a valid ONNX model"),
        ("empty.onnx", "not a valid ONNX model"),
        ("half.onnx", "not a valid ONNX model"),
        ("missing.onnx", "model file not found"),
        (
            "fixed32.onnx",
            "the graph takes input ['N', 32, 32, 3] (NHWC) but its description says height 16, width 16",
        ),
    ],
)
def test_broken_model_is_one_clear_line(
    odd_models: Path, photo_dir: Path, tmp_path: Path, name: str, expected: str
) -> None:
    run = segen("segment", photo_dir, "-m", odd_models / name, "-o", tmp_path / "out", "--device", "cpu")
    line = _one_error_line(run)
    assert name in line and expected in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_graph_with_fixed_batch_of_one_takes_any_batch_size(
    odd_models: Path, photo_dir: Path, tmp_path: Path
) -> None:
    args = ("segment", photo_dir, "-m", odd_models / "batch1.onnx", "-o", tmp_path / "o", "--device", "cpu")
    run = segen(*args, "--batch-size", "2")
    assert run.code == 0, run.stderr
    assert (assert_whole_png(tmp_path / "o" / "blue.png") == 2).all()


def test_bare_onnx_lists_what_is_missing_then_runs_with_flags(
    models_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    bare = models_dir / "bare-seg.onnx"
    base = ("segment", photo_dir, "-m", bare, "-o", tmp_path / "out", "--device", "cpu")
    line = _one_error_line(segen(*base))
    assert "no segen.* metadata" in line and "dynamic" in line and "--image-size" in line, line
    line = _one_error_line(segen(*base, "--class-names", "r,g,b"))
    assert "--image-size" in line, line  # the graph says the layout; the size it cannot say
    line = _one_error_line(segen(*base, "--image-size", "16", "16", "--class-names", "r,g"))
    assert "outputs 3 classes" in line and "names 2" in line, line
    assumed = segen(*base, "--image-size", "16", "16")  # classes and scaling assumed, and said
    assert assumed.code == 0 and "assumed" in assumed.stderr and "class0, class1, class2" in assumed.stderr

    described = (*base, "--image-size", "16", "16", "--class-names", "r,g,b", "--pixel-scale", "0.00392")
    line = _one_error_line(segen(*described))  # the masks made with assumed classes are not redone
    assert "made by another run" in line and "the model's description" in line and "--overwrite" in line
    run = segen(*described, "--overwrite")
    assert run.code == 0, run.stderr
    assert (assert_whole_png(tmp_path / "out" / "green.png") == 1).all()


def test_generator_given_to_segment_and_segmenter_to_generate(
    seg_model: Path, gen_model: Path, models_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    line = _one_error_line(segen("segment", photo_dir, "-m", gen_model, "-o", tmp_path, "--device", "cpu"))
    assert "is a generate model" in line and "segen-edge generate" in line
    gen = ("generate", "-n", "2", "--seed", "1", "-o", tmp_path / "g", "--device", "cpu")
    line = _one_error_line(segen(*gen, "-m", seg_model))
    assert "is a segment model" in line and "segen-edge segment" in line
    bare_gen = models_dir / "bare-gen.onnx"
    args = ("segment", photo_dir, "-m", bare_gen, "-o", tmp_path, "--device", "cpu")
    line = _one_error_line(segen(*args, "--image-size", "16", "16", "--class-names", "a,b,c"))
    assert "is a generate model" in line and "segen-edge generate" in line, line  # its rank-2 input says so
    assert not (tmp_path / "g").exists()


def _fixed_generator(path: Path, batch: int | str, latent: int) -> Path:
    weight = numpy_helper.from_array(np.ones((latent, 64), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 8, 8, 1], dtype=np.int64), "shape")
    x = helper.make_tensor_value_info("latents", TensorProto.FLOAT, [batch, latent])
    y = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 8, 8, 1])
    nodes = [
        helper.make_node("MatMul", ["latents", "w"], ["m"]),
        helper.make_node("Tanh", ["m"], ["t"]),
        helper.make_node("Reshape", ["t", "shape"], ["images"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, path, generator_info())  # says latent_size 4


@pytest.mark.parametrize(("batch", "latent"), [(1, 4), ("N", 8)], ids=["fixed-batch-1", "latent-8-not-4"])
def test_generator_graph_that_cannot_take_the_input_is_one_line(
    tmp_path: Path, batch: int | str, latent: int
) -> None:
    model = _fixed_generator(tmp_path / "g.onnx", batch, latent)
    run = segen("generate", "-m", model, "-n", "3", "--seed", "1", "-o", tmp_path / "out", "--device", "cpu")
    if latent == 4:  # a fixed batch of one can simply be fed one latent at a time
        assert run.code == 0, run.stderr
    else:
        assert "latent" in _one_error_line(run)


# -- interrupted runs --------------------------------------------------------------------

KILL_IMAGES = 300


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """KILL_IMAGES copies of a 256x256 noise JPEG (about 1.5 s of work on a busy 2-core box)."""
    folder = tmp_path_factory.mktemp("many")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "im0000.jpg", quality=90)
    for i in range(1, KILL_IMAGES):
        shutil.copyfile(folder / "im0000.jpg", folder / f"im{i:04d}.jpg")
    return folder


def _start(folder: Path, model: Path, out: Path, summary: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "segen_edge.cli", "segment", str(folder), "-m", str(model)]
    command += ["-o", str(out), "--device", "cpu", "--batch-size", "4", "--summary", str(summary)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_outputs(process: subprocess.Popen[str], out: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and any(out.glob("*.png")):
            return
        if process.poll() is not None:
            pytest.fail(f"segment ended before any output: {process.communicate()[1]}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("no output appeared")


def _pngs(out: Path) -> list[Path]:
    return sorted(out.glob("*.png"))


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def _manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "segen-manifest.jsonl").read_text().splitlines()]


def _resume(folder: Path, model: Path, out: Path, done_before: int, in_flight: int = 0) -> None:
    """Re-run: everything is done after it; what was done before is skipped, except up to
    `in_flight` files a kill caught between their rename and their manifest line (whole,
    but not recorded as done, so they are made again)."""
    summary = out.parent / "resume.json"
    run = segen("segment", folder, "-m", model, "-o", out, "--device", "cpu", "--summary", summary)
    assert run.code == 0, run.stderr
    counts = json.loads(summary.read_text())["counts"]
    assert counts["failed"] == 0 and counts["ok"] + counts["skipped"] == KILL_IMAGES
    assert done_before - in_flight <= counts["skipped"] <= done_before, counts
    masks = _pngs(out)
    assert [p.stem for p in masks] == sorted(p.stem for p in folder.iterdir())
    for path in masks:
        assert assert_whole_png(path).shape == (256, 256)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_rerun_completes(
    many_photos: Path, seg_model: Path, tmp_path: Path, signum: int
) -> None:
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    process = _start(many_photos, seg_model, out, summary)
    _wait_for_outputs(process, out)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast for this test)")
    assert process.returncode == 128 + signum, stderr  # 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in stderr
    assert "stopping after the files in flight" in stderr
    assert f"interrupted by signal {int(signum)}" in stderr
    assert "run the same command again to finish the rest" in stderr

    masks = _pngs(out)
    assert 0 < len(masks) < KILL_IMAGES
    for path in masks:
        assert_whole_png(path)
    assert _leftovers(out) == []
    # what it says it did is what it did: the printed paths and the count
    printed = [Path(line) for line in stdout.splitlines()]
    assert sorted(printed) == masks
    assert f"{len(masks)} segmented" in stderr
    document = json.loads(summary.read_text())
    assert document["interrupted"] is True and document["counts"]["ok"] == len(masks)

    _resume(many_photos, seg_model, out, len(masks))


def test_sigkill_leaves_only_whole_pngs_and_rerun_completes(
    many_photos: Path, seg_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = _start(many_photos, seg_model, out, tmp_path / "summary.json")
    _wait_for_outputs(process, out)
    time.sleep(0.05)
    process.kill()
    process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the kill arrived")
    masks = _pngs(out)
    for path in masks:  # a kill may leave a hidden .part temp file, never a torn PNG
        assert_whole_png(path)
    assert all(name.endswith(".part") for name in _leftovers(out))
    _resume(many_photos, seg_model, out, len(masks), in_flight=2 * 8)  # lanes x batch


def test_second_sigint_aborts_without_traceback_or_torn_files(seg_model: Path, tmp_path: Path) -> None:
    """Ctrl-C twice: the in-flight batch is abandoned, yet every PNG on disk is whole."""
    folder, out = tmp_path / "big", tmp_path / "out"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "im000.jpg", quality=90)
    for i in range(1, 48):
        shutil.copyfile(folder / "im000.jpg", folder / f"im{i:03d}.jpg")
    process = _start(folder, seg_model, out, tmp_path / "summary.json")
    _wait_for_outputs(process, out)
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    first = process.stderr.readline()  # the handler has run: the next Ctrl-C aborts
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signals arrived")
    assert "Ctrl-C again to abort" in first
    assert process.returncode == 130
    assert "Traceback" not in rest, rest
    for path in _pngs(out):
        assert_whole_png(path)
    assert _leftovers(out) == []


# -- issue 17: nothing lost, nothing confusing -------------------------------------------------


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_out_a_parent_of_the_input_folder_never_touches_an_input(seg_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    solid(root / "in" / "x.png", RED)
    solid(root / "in" / "in" / "x.png", GREEN)  # mirrored, its mask would be p/in/x.png: an input
    inputs = _digests(root)
    args = ("segment", root / "in", "-r", "-m", seg_model, "-o", root, "--device", "cpu", "--overwrite")
    for _ in range(2):  # with --overwrite, twice: the second run must not segment the first's outputs
        run = segen(*args)
        assert run.code == 0, run.stderr
        assert {p: d for p, d in _digests(root).items() if p in inputs} == inputs
    assert (assert_whole_png(root / "x.png") == 0).all()
    assert (assert_whole_png(root / "in" / "x.mask.png") == 1).all()
    assert "2 segmented" in run.stderr


def test_summary_json_and_grid_never_replace_an_image(
    seg_model: Path, gen_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    photo = photo_dir / "red.png"
    before = photo.read_bytes()
    base = ("segment", photo_dir, "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu")
    line = _one_error_line(segen(*base, "--summary", photo))
    assert "is an input of this run" in line, line
    same = tmp_path / "s.json"
    line = _one_error_line(segen(*base, "--summary", same, "--json", same))
    assert "also given to --summary" in line, line
    holiday = solid(tmp_path / "holiday.jpg", BLUE)
    line = _one_error_line(segen(*base, "--summary", holiday))
    assert "not a .json file" in line
    assert photo.read_bytes() == before and not (tmp_path / "out").exists()  # refused before any work
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.json")
        line = _one_error_line(segen(*base, "--summary", tmp_path / "pipe.json"))  # never opened: no hang
        assert "not a regular file" in line

    gen = ("generate", "-m", gen_model, "-n", "3", "--seed", "1", "-o", tmp_path / "g", "--device", "cpu")
    kept = holiday.read_bytes()
    line = _one_error_line(segen(*gen, "--grid", holiday))
    assert "not a .png file" in line and holiday.read_bytes() == kept
    line = _one_error_line(segen(*gen, "--grid", tmp_path / "g" / "tiny-gen-s1-00001.png"))
    assert "is where generated image 1 goes" in line
    grid = solid(tmp_path / "grid.png", RED)
    kept = grid.read_bytes()
    run = segen(*gen, "--grid", grid)  # the skip rule: an existing grid is kept ...
    assert run.code == 0 and "kept (--overwrite replaces it)" in run.stderr and grid.read_bytes() == kept
    run = segen(*gen, "--grid", grid, "--overwrite")  # ... and replaced with --overwrite
    assert run.code == 0 and grid.read_bytes() != kept


def test_generate_numbers_and_a_folder_in_the_way_are_one_line(gen_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "g"
    base = ("generate", "-m", gen_model, "-n", "3", "-o", out, "--device", "cpu")
    run = segen(*base, "--seed", "2", "--json", "-o", tmp_path / "j")  # --json as on every verb
    document = json.loads(run.stdout)
    assert run.code == 0 and document["seed"] == 2 and document["counts"] == {"written": 3, "skipped": 0}
    line = _one_error_line(segen(*base, "--seed", "-1"))
    assert "--seed -1: expected a whole number from 0 to" in line
    line = _one_error_line(segen(*base, "--seed", "1", "--threads", "100000"))
    assert "--threads 100000: expected a whole number from 1 to" in line
    (out / "tiny-gen-s1-00001.png").mkdir(parents=True)
    line = _one_error_line(segen(*base, "--seed", "1"))
    assert "tiny-gen-s1-00001.png: a folder or special file is where a generated image goes" in line
    assert sorted(p.name for p in out.iterdir()) == ["tiny-gen-s1-00001.png"]  # nothing written


def test_adding_a_kind_keeps_a_hand_edited_mask(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ("segment", photo_dir, "-m", seg_model, "-o", out, "--device", "cpu", "--list")
    assert segen(*base).code == 0
    Image.fromarray(np.full((20, 30), 2, np.uint8)).save(out / "red.png")  # fixed by hand
    edited = (out / "red.png").read_bytes()
    run = segen(*base, "--save", "mask,color")
    assert run.code == 0, run.stderr
    assert sorted(Path(p).name for p in run.stdout.split()) == [
        "blue.color.png",
        "green.color.png",
        "red.color.png",
    ]
    assert (out / "red.png").read_bytes() == edited
    assert "3 segmented" in run.stderr  # the model ran for the new kind only


def test_changed_input_set_never_credits_one_input_with_anothers_output(
    seg_model: Path, tmp_path: Path
) -> None:
    folder, out, summary = tmp_path / "in", tmp_path / "out", tmp_path / "s.json"
    solid(folder / "a.png", RED)
    base = ("segment", "-m", seg_model, "-o", out, "--device", "cpu", "--summary", summary)
    assert segen(base[0], folder, *base[1:]).code == 0
    solid(folder / "a.jpg", BLUE)  # added; sorts before a.png
    for args in ([folder / "a.jpg", folder / "a.png"], [folder / "a.png", folder / "a.jpg"], [folder]):
        run = segen(base[0], *args, *base[1:])
        assert run.code == 0, run.stderr
        entries = load_summary(summary)
        red, blue = entries[(folder / "a.png").as_posix()], entries[(folder / "a.jpg").as_posix()]
        assert red["outputs"] == [str(out / "a.png")] and (assert_whole_png(out / "a.png") == 0).all()
        assert (
            blue["outputs"] == [str(out / "a_jpg.png")] and (assert_whole_png(out / "a_jpg.png") == 2).all()
        )


def test_another_model_into_the_same_out_is_refused(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ("segment", photo_dir, "-o", out, "--device", "cpu")
    assert segen(*base, "-m", seg_model).code == 0
    other = make_segmenter(tmp_path / "other.onnx", segmenter_info(palette=((9, 9, 9), (8, 8, 8), (7, 7, 7))))
    masks = _digests(out)
    line = _one_error_line(segen(*base, "-m", other))
    assert "made by another run than this one (model tiny-seg-fp32.onnx" in line and "-> other.onnx" in line
    assert "pass --overwrite to redo them, or pick another --out" in line
    assert _digests(out) == masks
    assert segen(*base, "-m", other, "--overwrite").code == 0


def test_glob_with_dotdot_after_a_wildcard_is_refused(seg_model: Path, tmp_path: Path) -> None:
    solid(tmp_path / "photos" / "a" / "x.png", RED)
    solid(tmp_path / "elsewhere" / "y.png", RED)
    pattern = str(tmp_path / "photos" / "*" / ".." / ".." / "elsewhere" / "*.png")
    line = _one_error_line(
        segen("segment", pattern, "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu")
    )
    assert "would land outside --out" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: "-", "-: reading images from stdin is not supported"),
        (lambda d: "https://example.com/cat.jpg", "URLs are not supported"),
        (
            lambda d: (d / "clip.mp4").write_bytes(b"\0" * 16) and d / "clip.mp4",
            "video is not supported; extract frames first, e.g. with ffmpeg",
        ),
    ],
    ids=["stdin", "url", "video"],
)
def test_unsupported_inputs_are_named_as_such(
    seg_model: Path, tmp_path: Path, make: object, expected: str
) -> None:
    arg = make(tmp_path)  # type: ignore[operator]
    line = _one_error_line(segen("segment", arg, "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu"))
    assert expected in line, line


def test_dev_zero_as_an_input_is_one_failed_line(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    run = segen("segment", photo_dir, "/dev/zero", "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu")
    assert run.code == 1
    (line,) = run.errors
    assert "/dev/zero: not a regular file" in line
    assert "3 segmented" in run.stderr


def test_out_naming_a_png_with_one_input_writes_that_file(
    seg_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "mask.png"
    run = segen(
        "segment", photo_dir / "green.jpg", "-m", seg_model, "-o", target, "--device", "cpu", "--list"
    )
    assert run.code == 0, run.stderr
    assert target.is_file() and (assert_whole_png(target) == 1).all()
    assert run.stdout.split() == [str(target)]
    again = _one_error_line(
        segen("segment", photo_dir / "green.jpg", "-m", seg_model, "-o", target, "--device", "cpu")
    )
    assert "exists; pass --overwrite to replace it" in again
    line = _one_error_line(
        segen("segment", photo_dir, "-m", seg_model, "-o", tmp_path / "m2.png", "--device", "cpu")
    )
    assert "names one file, but the inputs hold 3 images" in line


def test_long_names_newlines_and_bytes_that_are_not_utf8(seg_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    long_stem = "p" * 240  # its outputs fit in 255 bytes; their temporary names must too
    solid(folder / f"{long_stem}.png", RED)
    (folder / "bad\nname.png").write_bytes(b"not an image")
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write(b"not an image either")
    command = [sys.executable, "-m", "segen_edge.cli", "segment", str(folder), "-m", str(seg_model)]
    command += ["-o", str(tmp_path / "out"), "--device", "cpu", "--save", "mask,overlay"]
    env = dict(os.environ, PYTHONIOENCODING="ascii:strict")  # a strict terminal
    done = subprocess.run(command, capture_output=True, env=env, timeout=120)
    stderr = done.stderr.decode("ascii")  # nothing but ASCII reached it
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 2
        and any("bad\\nname.png" in e for e in errors)
        and any("caf\\udce9.png" in e for e in errors)
    )
    assert "1 segmented" in stderr
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert f"{long_stem}.png" in made and f"{long_stem}.overlay.png" in made


def test_nan_model_outputs_make_no_warning_noise(tmp_path: Path, photo_dir: Path) -> None:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "H", "W", 3])
    nodes = [
        helper.make_node("Sub", ["image", "image"], ["z"]),
        helper.make_node("Div", ["z", "z"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "nan", [x], [y])
    model = _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        tmp_path / "nan.onnx",
        segmenter_info(),
    )
    command = [sys.executable, "-m", "segen_edge.cli", "segment", str(photo_dir), "-m", str(model)]
    command += ["-o", str(tmp_path / "out"), "--device", "cpu", "--save", "mask,overlay"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "invalid value" not in done.stderr, done.stderr


def test_segment_json_progress_total_and_quiet_verbose_on_every_verb(
    seg_model: Path, photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segen_edge.cli import common

    totals: list[object] = []

    class Bar:
        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def add_task(self, label: str, total: object = None) -> int:
            totals.append(total)
            return 0

        def advance(self, *args: object) -> None:
            return None

        def update(self, *args: object, **kw: object) -> None:
            return None

    monkeypatch.setattr(common, "progress", lambda label: Bar())
    run = segen("segment", photo_dir, "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu", "--json")
    assert run.code == 0, run.stderr
    document = json.loads(run.stdout)  # stdout carries the summary only: no paths mixed in
    assert document["counts"] == {"ok": 3, "skipped": 0, "failed": 0}
    assert totals == [3]  # the bar knows the total (and so its ETA) from the plan
    quiet = segen(
        "segment", photo_dir, "-m", seg_model, "-o", tmp_path / "out", "--device", "cpu", "-q", "--no-list"
    )
    assert quiet.code == 0 and quiet.stdout == "" and quiet.stderr == ""
    for verb in ("segment", "generate", "bench", "info", "evaluate", "models"):
        text = segen(verb, "--help").stdout
        assert "--quiet" in text and "--verbose" in text, verb
