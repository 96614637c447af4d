"""The CLI contract: every verb and flag, exit codes, outputs, through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, PALETTE, make_segmenter, segmenter_info, solid
from PIL import Image
from typer.testing import CliRunner

from segen_edge import cli
from segen_edge.pipeline import batch_threads, cpu_count
from segen_edge.tiling import tile_grid

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    """Run the CLI as `segen-edge` does (cli.main maps SegenError to exit 1)."""
    result = runner.invoke(cli.app, list(args))
    code = result.exit_code
    stderr = result.stderr
    if result.exception and not isinstance(result.exception, SystemExit):
        from segen_edge.errors import SegenError

        if not isinstance(result.exception, SegenError):
            raise result.exception
        code, stderr = 1, stderr + f"error: {result.exception}\n"
    return code, result.stdout, stderr


# -- import hygiene ------------------------------------------------------------------------


def test_runtime_never_imports_tensorflow_or_keras() -> None:
    code = (
        "import sys, segen_edge.cli, segen_edge.model, segen_edge.segment, segen_edge.generate; "
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_help_and_version_import_nothing_heavy() -> None:
    code = (
        "import sys; from segen_edge import cli; "
        "heavy = [m for m in ('onnxruntime', 'numpy', 'PIL') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("segen-edge ")


def test_usage_error_exits_2(seg_model: Path, photo_dir: Path) -> None:
    assert run("segment", str(photo_dir), "--batch-size", "0")[0] == 2
    assert run("segment", str(photo_dir), "-m", str(seg_model), "--save", "bogus")[0] == 2
    assert run("segment", str(photo_dir), "--device", "tpu")[0] == 2
    assert run("no-such-verb")[0] == 2


# -- segment -------------------------------------------------------------------------------


def test_segment_writes_masks_at_input_size_with_class_ids(
    seg_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run("segment", str(photo_dir), "-m", str(seg_model), "-o", str(out))
    assert code == 0, stderr
    expected = {"red.png": (0, (20, 30)), "green.png": (1, (17, 9)), "blue.png": (2, (5, 40))}
    for name, (class_id, size) in expected.items():
        with Image.open(out / name) as img:
            assert img.mode == "P"
            mask = np.asarray(img)
            assert mask.shape == size
            assert (mask == class_id).all()
            palette = img.getpalette()[: 3 * len(PALETTE)]
            assert [tuple(palette[i : i + 3]) for i in range(0, 9, 3)] == list(PALETTE)
    assert sorted(Path(p).name for p in stdout.split()) == sorted(expected)
    assert "running tiny-seg-fp32.onnx on cpu" not in stderr  # said only with --verbose


def test_segment_soft_cutout_takes_its_alpha_from_the_probabilities(
    seg_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, stderr = run(
        "segment", str(photo_dir / "red.png"), "-m", str(seg_model), "-o", str(out),
        "--save", "cutout-soft,prob", "--keep", "red",
    )  # fmt: skip
    assert code == 0, stderr
    from segen_edge.render import read_probabilities

    probs, _ = read_probabilities(out / "red.prob.npz")
    with Image.open(out / "red.cutout-soft.png") as img:
        assert img.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(img)[..., 3], probs[0])
    code, _, stderr = run(
        "segment", str(photo_dir / "red.png"), "-m", str(seg_model), "--save", "cutout-soft"
    )
    assert code == 2 and "need --keep CLASS" in stderr


def test_verbose_says_what_runs_where_and_why(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    red = str(photo_dir / "red.png")
    code, _, stderr = run(
        "segment", red, "-m", str(seg_model), "-o", str(tmp_path / "a"), "-v", "--threads", "2"
    )
    assert code == 0, stderr
    assert "running tiny-seg-fp32.onnx on cpu, 2 threads per run" in stderr
    assert "fp32 file on cpu" in stderr  # what auto chose for this file, and from what
    code, _, stderr = run(
        "segment", red, "-m", str(seg_model), "-o", str(tmp_path / "b"), "-v", "-d", "cpu", "-p", "fp32"
    )
    assert code == 0, stderr
    cores = cpu_count()  # one photo: its one run gets every core, not one lane's
    assert f"running tiny-seg-fp32.onnx on cpu, {cores} thread{'s' if cores > 1 else ''} per run" in stderr
    assert "file on cpu" not in stderr  # nothing was chosen: nothing to explain
    code, _, stderr = run(
        "segment", str(photo_dir), "-m", str(seg_model), "-o", str(tmp_path / "c"), "-v", "-b", "1"
    )
    assert code == 0, stderr
    expected = max(1, cores // 3)
    assert f"on cpu, {expected} thread{'s' if expected > 1 else ''} per run" in stderr
    tiled = make_segmenter(tmp_path / "tiled-fp32.onnx", segmenter_info(mode="tile", tile_size=(8, 8)))
    code, _, stderr = run("segment", red, "-m", str(tiled), "-o", str(tmp_path / "d"), "-v", "-d", "cpu")
    assert code == 0, stderr  # one photo, but its windows make several runs, which share the cores
    runs = -(-tile_grid((20, 30), (8, 8), 0.25).count // 8)
    each = batch_threads(None, runs)
    assert (
        runs > 1
        and f"running tiled-fp32.onnx on cpu, {each} thread{'s' if each > 1 else ''} per run" in stderr
    )


def test_segment_save_kinds_and_summary(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    code, _, _ = run(
        "segment", str(photo_dir / "red.png"), "-m", str(seg_model), "-o", str(out),
        "--save", "mask,color,overlay", "--summary", str(summary),
    )  # fmt: skip
    assert code == 0
    colour = np.asarray(Image.open(out / "red.color.png"))
    assert (colour == PALETTE[0]).all()
    overlay = np.asarray(Image.open(out / "red.overlay.png")).astype(int)
    assert np.abs(overlay - (255, 0, 0)).max() <= 1  # red blended with red stays red
    document = json.loads(summary.read_text())
    assert document["class_names"] == list(CLASSES)
    assert document["counts"] == {"ok": 1, "skipped": 0, "failed": 0}
    (entry,) = document["images"]
    assert entry["class_fractions"] == {"red": 1.0, "green": 0.0, "blue": 0.0}
    assert entry["size_hw"] == [20, 30]


def test_segment_mixed_image_fractions(seg_model: Path, tmp_path: Path) -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :4] = (255, 0, 0)
    image[:, 4:] = (0, 0, 255)
    Image.fromarray(image).save(tmp_path / "half.png")
    summary = tmp_path / "s.json"
    code, _, _ = run(
        "segment", str(tmp_path / "half.png"), "-m", str(seg_model), "-o", str(tmp_path / "o"),
        "--summary", str(summary),
    )  # fmt: skip
    assert code == 0
    fractions = json.loads(summary.read_text())["images"][0]["class_fractions"]
    assert fractions["red"] == pytest.approx(0.4, abs=0.05)
    assert fractions["blue"] == pytest.approx(0.6, abs=0.05)


def test_segment_recursive_mirrors_tree_and_globs(seg_model: Path, tmp_path: Path) -> None:
    solid(tmp_path / "in" / "a" / "x.png", (255, 0, 0))
    solid(tmp_path / "in" / "b" / "x.png", (0, 255, 0))
    out = tmp_path / "out"
    code, _, _ = run("segment", str(tmp_path / "in"), "-m", str(seg_model), "-o", str(out))
    assert code == 1  # nothing at the top level without --recursive
    code, _, _ = run("segment", str(tmp_path / "in"), "-r", "-m", str(seg_model), "-o", str(out))
    assert code == 0
    assert (np.asarray(Image.open(out / "a" / "x.png")) == 0).all()
    assert (np.asarray(Image.open(out / "b" / "x.png")) == 1).all()
    glob_out = tmp_path / "glob"
    code, stdout, _ = run(
        "segment", str(tmp_path / "in" / "*" / "x.png"), "-m", str(seg_model), "-o", str(glob_out)
    )
    assert code == 0 and len(stdout.split()) == 2


def test_segment_skips_existing_unless_overwrite(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("segment", str(photo_dir), "-m", str(seg_model), "-o", str(out))[0] == 0
    (out / "red.png").write_bytes(b"stale")
    code, stdout, stderr = run("segment", str(photo_dir), "-m", str(seg_model), "-o", str(out))
    assert code == 0 and stdout == "" and "3 skipped" in stderr
    assert (out / "red.png").read_bytes() == b"stale"
    code, _, stderr = run("segment", str(photo_dir), "-m", str(seg_model), "-o", str(out), "--overwrite")
    assert code == 0 and "3 segmented" in stderr
    assert (np.asarray(Image.open(out / "red.png")) == 0).all()


@pytest.mark.parametrize("batch_size", ["1", "2", "64"])
def test_segment_batch_sizes_agree(seg_model: Path, photo_dir: Path, tmp_path: Path, batch_size: str) -> None:
    out = tmp_path / batch_size
    assert run("segment", str(photo_dir), "-m", str(seg_model), "-o", str(out), "-b", batch_size)[0] == 0
    assert (np.asarray(Image.open(out / "green.png")) == 1).all()


def test_segment_nchw_layout_model(models_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("segment", str(photo_dir), "-m", str(models_dir / "tiny-nchw.onnx"), "-o", str(out))[0] == 0
    assert (np.asarray(Image.open(out / "blue.png")) == 2).all()


def test_segment_precision_picks_sibling_file(models_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    fp32 = str(models_dir / "tiny-seg-fp32.onnx")
    code, _, _ = run(
        "segment",
        str(photo_dir),
        "-m",
        fp32,
        "-p",
        "int8",
        "-o",
        str(tmp_path / "o"),
        "--summary",
        str(summary),
    )
    assert code == 0
    assert json.loads(summary.read_text())["precision"] == "int8"
    code, _, stderr = run("segment", str(photo_dir), "-m", fp32, "-p", "fp16", "-o", str(tmp_path / "o2"))
    assert code == 1 and "no fp16 file" in stderr and "fp32, int8" in stderr


def test_segment_threads_and_workers(seg_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    code, _, _ = run(
        "segment", str(photo_dir), "-m", str(seg_model), "-o", str(tmp_path / "o"),
        "--threads", "1", "--workers", "1", "--device", "cpu",
    )  # fmt: skip
    assert code == 0


def test_segment_explicit_device_that_does_not_load_names_the_fix(
    seg_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    from segen_edge.providers import cuda_available, openvino_devices

    if not cuda_available():
        code, _, stderr = run(
            "segment", str(photo_dir), "-m", str(seg_model), "-d", "cuda", "-o", str(tmp_path)
        )
        assert code == 1 and "segen-edge[gpu]" in stderr
    if not openvino_devices():
        code, _, stderr = run(
            "segment", str(photo_dir), "-m", str(seg_model), "-d", "openvino", "-o", str(tmp_path)
        )
        assert code == 1 and "segen-edge[openvino]" in stderr


def test_segment_rejects_generator_and_names_verb(gen_model: Path, photo_dir: Path) -> None:
    code, _, stderr = run("segment", str(photo_dir), "-m", str(gen_model))
    assert code == 1 and "segen-edge generate" in stderr


def test_segment_bare_onnx_needs_and_accepts_metadata_flags(
    models_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    bare = str(models_dir / "bare-seg.onnx")
    code, _, stderr = run("segment", str(photo_dir), "-m", bare, "-o", str(tmp_path / "o"))
    assert code == 1 and "--image-size" in stderr
    code, _, stderr = run(
        "segment", str(photo_dir), "-m", bare, "-o", str(tmp_path / "o"),
        "--image-size", "16", "16", "--pixel-scale", "0.00392", "--class-names", "r,g,b",
    )  # fmt: skip
    assert code == 0, stderr
    assert (np.asarray(Image.open(tmp_path / "o" / "green.png")) == 1).all()


# -- generate ------------------------------------------------------------------------------


def test_generate_same_seed_same_images_any_batch_size(gen_model: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run("generate", "-n", "5", "--seed", "7", "-m", str(gen_model), "-o", str(a))[0] == 0
    assert run("generate", "-n", "5", "--seed", "7", "-m", str(gen_model), "-o", str(b), "-b", "2")[0] == 0
    assert run("generate", "-n", "5", "--seed", "8", "-m", str(gen_model), "-o", str(c))[0] == 0
    files_a, files_b = sorted(a.iterdir()), sorted(b.iterdir())
    assert len(files_a) == 5 and [f.name for f in files_a] == [f.name for f in files_b]
    for fa, fb in zip(files_a, files_b, strict=True):
        assert np.array_equal(np.asarray(Image.open(fa)), np.asarray(Image.open(fb)))
    first_c = sorted(c.iterdir())[0]
    assert not np.array_equal(np.asarray(Image.open(files_a[0])), np.asarray(Image.open(first_c)))
    image = np.asarray(Image.open(files_a[0]))
    assert image.shape == (8, 8) and image.dtype == np.uint8 and image.std() > 0


def test_generate_grid_and_random_seed_is_reported(gen_model: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    code, stdout, stderr = run(
        "generate", "-n", "6", "-m", str(gen_model), "-o", str(tmp_path / "g"), "--grid", str(grid)
    )
    assert code == 0 and "--seed" in stderr
    assert np.asarray(Image.open(grid)).shape == (2 * 10 + 2, 3 * 10 + 2)  # 3 columns, 2 rows, pad 2
    assert str(grid) in stdout.split()
    code, _, _ = run(
        "generate", "-n", "6", "-m", str(gen_model), "-o", str(tmp_path / "g"), "--seed", "1",
        "--grid", str(grid), "--grid-scale", "3", "--overwrite",
    )  # fmt: skip
    assert code == 0 and np.asarray(Image.open(grid)).shape == (3 * 22, 3 * 32)


def test_generate_code_picks_a_category_and_names_the_files(tmp_path: Path) -> None:
    from conftest import generator_info, make_generator

    from segen_edge.generate import with_code

    coded = make_generator(tmp_path / "coded.onnx", generator_info(card={"categorical_code": 3}))
    out = tmp_path / "o"
    code, _, stderr = run(
        "generate", "-n", "4", "--seed", "5", "-m", str(coded), "-o", str(out), "--code", "2"
    )
    assert code == 0, stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"tiny-gen-c2-s5-{i:05d}.png" for i in range(4)]
    # the tiny generator is tanh(latents @ W): recompute image 0 from the coded latents
    latents = with_code(np.random.default_rng(5).standard_normal((4, 4), dtype=np.float32), 3, 2)
    assert (latents[:, :3].argmax(axis=1) == 2).all()
    weight = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    expected = np.rint((np.tanh(latents[0] @ weight) + 1) * 127.5).reshape(8, 8)
    assert np.abs(np.asarray(Image.open(files[0])).astype(int) - expected).max() <= 1
    code, _, stderr = run("generate", "-n", "1", "-m", str(coded), "-o", str(out), "--code", "3")
    assert code != 0 and "3 categories; pass 0 to 2" in stderr
    assert "tiny-gen" in stderr


def test_generate_code_needs_a_coded_model(gen_model: Path, tmp_path: Path) -> None:
    code, _, stderr = run("generate", "-m", str(gen_model), "-o", str(tmp_path), "--code", "1")
    assert code != 0 and "no categorical code" in stderr and "--codes" in stderr
    assert not any(tmp_path.iterdir())


def test_with_code_only_swaps_two_entries_per_row() -> None:
    from segen_edge.generate import with_code

    latents = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    coded = with_code(latents, 4, 1)
    assert (coded[:, :4].argmax(axis=1) == 1).all()
    np.testing.assert_array_equal(np.sort(coded, axis=1), np.sort(latents, axis=1))
    np.testing.assert_array_equal(coded[:, 4:], latents[:, 4:])
    assert ((coded != latents).sum(axis=1) <= 2).all()


def test_generate_rejects_segmenter(seg_model: Path, tmp_path: Path) -> None:
    code, _, stderr = run("generate", "-m", str(seg_model), "-o", str(tmp_path))
    assert code == 1 and "segen-edge segment" in stderr


def test_generate_bare_onnx_with_flags(models_dir: Path, tmp_path: Path) -> None:
    bare = str(models_dir / "bare-gen.onnx")
    code, _, stderr = run("generate", "-n", "2", "-m", bare, "-o", str(tmp_path / "a"), "--seed", "1")
    assert code == 0 and "assumed outputs in [-1, 1]" in stderr  # the graph gives the latent size
    code, _, stderr = run(
        "generate", "-n", "2", "-m", bare, "-o", str(tmp_path / "g"), "--seed", "1",
        "--latent-size", "4", "--image-size", "8", "8", "--pixel-scale", "0.00784", "--pixel-offset", "-1",
    )  # fmt: skip
    assert code == 0, stderr
    assert len(list((tmp_path / "g").glob("*.png"))) == 2


# -- bench, models, info -------------------------------------------------------------------


def test_bench_reports_each_batch_and_writes_json(seg_model: Path, gen_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    code, stdout, _ = run(
        "bench", "-m", str(seg_model), "-m", str(gen_model), "-b", "1,3", "--runs", "4",
        "--warmup", "1", "--threads", "1", "--json", str(path), "-d", "cpu",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(path.read_text())
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("tiny-seg", 1),
        ("tiny-seg", 3),
        ("tiny-gen", 1),
        ("tiny-gen", 3),
    ]
    for row in rows:
        assert row["provider"] == "cpu" and row["runs"] == 4
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["size_mb"] >= 0
        assert row["stream_images_per_s"] > 0 and row["lanes"] >= 1
    assert "tiny-seg" in stdout and "p50" in stdout


def test_bench_all_precisions(seg_model: Path) -> None:
    code, stdout, _ = run("bench", "-m", str(seg_model), "-p", "all", "-b", "1", "--runs", "2")
    assert code == 0 and "int8" in stdout and "fp32" in stdout


def test_info_json_gives_path_precisions_and_card(seg_model: Path) -> None:
    code, stdout, _ = run("info", str(seg_model), "--json")
    assert code == 0
    data = json.loads(stdout)
    described = data["description"]
    assert described["task"] == "segment" and described["class_names"] == list(CLASSES)
    assert data["file"]["path"] == str(seg_model)
    assert set(data["precisions"]) == {"fp32", "int8"}
    assert described["card"] == {"dataset": "synthetic"}
    assert data["verbs"] == {"segment": "ready", "generate": "no: a segment model"}
    code, stdout, _ = run("info", str(seg_model))
    assert code == 0 and "classes: " + ", ".join(CLASSES) in stdout and "synthetic" not in stdout
    code, stdout, _ = run("info", str(seg_model), "--card")
    assert code == 0 and "synthetic" in stdout


def test_info_on_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("hello, I am not a model")
    code, _, stderr = run("info", str(bogus))
    assert code == 1 and "model.onnx" in stderr and "not a valid ONNX model" in stderr


def test_models_lists_bundled(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    from segen_edge import zoo

    monkeypatch.setattr(zoo, "BUNDLED_DIR", models_dir)
    monkeypatch.setattr(zoo.bundled_models, "__defaults__", (models_dir,))
    code, stdout, _ = run("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert set(rows) == {"tiny-seg", "tiny-gen"}
    assert set(rows["tiny-seg"]["precisions"]) == {"fp32", "int8"}
    code, stdout, _ = run("models")
    assert code == 0 and "tiny-gen" in stdout


# -- train / export dispatch ---------------------------------------------------------------


def test_train_without_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    for i in range(4):  # a valid data set: the arguments and the data are checked first
        solid(tmp_path / "images" / f"a{i}.png", (255, 0, 0), (32, 32))
        solid(tmp_path / "masks" / f"a{i}.png", (1,), (32, 32), mode="L")
    code, _, stderr = run("train", "unet", "--data", str(tmp_path), "--image-size", "32", "32")
    assert code == 1, stderr
    assert "pip install 'segen-edge[train]'" in stderr


def test_main_maps_errors_to_exit_codes(seg_model: Path, tmp_path: Path) -> None:
    assert cli.main(["segment", str(tmp_path / "missing"), "-m", str(seg_model)]) == 1
    assert cli.main(["segment", "--bogus-flag"]) == 2
    assert cli.main(["--version"]) == 0


# -- evaluate ------------------------------------------------------------------------------


def test_evaluate_scores_held_out_pairs(tmp_path: Path) -> None:
    from conftest import make_segmenter, segmenter_info

    data = tmp_path / "data"
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for stem, colour in colours.items():
        solid(data / "images" / f"{stem}.png", colour, (8, 8))
        truth = np.full((8, 8), "rgb".index(stem), np.uint8)
        truth[0, :] = 0  # one row labelled red: wrong for g and b
        (data / "masks").mkdir(exist_ok=True)
        Image.fromarray(truth).save(data / "masks" / f"{stem}.png")
    card = {"data": str(data), "held_out": ["g", "b"], "mask_encoding": "index"}
    model = make_segmenter(tmp_path / "m.onnx", segmenter_info(card=card))
    code, stdout, _ = run("evaluate", str(model), "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["images"] == 2
    assert result["pixel_accuracy"] == pytest.approx(112 / 128)
    # red: 0 TP, 16 FN; green and blue: 56 TP, 8 FP each -> IoU 56/64
    assert result["iou"] == {"red": 0.0, "green": 0.875, "blue": 0.875}
    code, stdout, _ = run("evaluate", str(model), "--split", "all", "--json")
    assert json.loads(stdout)["images"] == 3
    code, _, stderr = run("evaluate", str(model), "--data", str(tmp_path / "nowhere"))
    assert code == 1 and "nowhere" in stderr
