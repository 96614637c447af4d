"""The Ray engine on a real local Ray instance (2 CPUs): the local job's outputs, bit for bit."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pafs = pytest.importorskip("pyarrow.fs")

from segen_edge import load_segmenter  # noqa: E402
from segen_edge.errors import BadInputError  # noqa: E402
from segen_edge.jobs import ImageResult, iter_segment_files  # noqa: E402
from segen_edge.manifest import Manifest, rel_of  # noqa: E402
from segen_edge.segment import RunSettings  # noqa: E402

sr = pytest.importorskip("segen_edge.ray")

pytestmark = pytest.mark.slow  # each Ray run starts actors (~10 s); CI runs them, the quick lane not

SAVE = ("mask", "color")


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the whole session; its workers keep the test's model cache."""
    cache = tmp_path_factory.getbasetemp() / "ort-cache"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"SEGEN_EDGE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _noise(path: Path, size: tuple[int, int], seed: int) -> None:
    """Random pixels, so the tiny model's mask differs from pixel to pixel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten images of different sizes (two in a subfolder, two with one stem), a truncated
    PNG and a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    sizes = [(20, 30), (17, 9), (5, 40), (33, 33), (8, 8), (40, 12), (1, 1), (16, 16)]
    for i, size in enumerate(sizes):
        _noise(root / f"img{i}.png", size, i)
    _noise(root / "sub" / "img0.png", (12, 21), 100)  # same stem as img0, another folder
    _noise(root / "img0.jpg", (9, 14), 101)  # same stem as img0.png, same folder
    good = (root / "img3.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notimage.jpg").write_text("this is no image\n")
    return root


def _by_input(results: list[ImageResult]) -> dict[str, ImageResult]:
    return {os.fspath(r.source.path): r for r in results}


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*.png")
        if not p.name.startswith(".")
    }


def _ray_run(model: object, inputs: list[str], out: Path, **options: object) -> list[ImageResult]:
    return list(sr.iter_segment_ray(model, inputs, out, save=SAVE, recursive=True, actors=2, **options))


def test_same_results_and_bytes_as_the_local_engine(
    ray_instance: None, seg_model: Path, photos: Path, tmp_path: Path
) -> None:
    seg = load_segmenter(seg_model)
    local = list(
        iter_segment_files(seg, [str(photos)], tmp_path / "local", save=SAVE, recursive=True, batch_size=4)
    )
    distributed = _ray_run(seg_model, [str(photos)], tmp_path / "ray", batch_size=4)

    assert len(distributed) == len(local) == 12
    want, got = _by_input(local), _by_input(distributed)
    assert set(want) == set(got)
    for key, expected in want.items():
        result = got[key]
        assert result.status == expected.status, key
        assert result.error == expected.error
        assert result.size == expected.size
        assert result.fractions == expected.fractions
        rel = [p.relative_to(tmp_path / "ray") for p in result.outputs]
        assert rel == [p.relative_to(tmp_path / "local") for p in expected.outputs]
    failed = sorted(Path(k).name for k, r in got.items() if r.status == "failed")
    assert failed == ["notimage.jpg", "truncated.png"]
    assert "truncated" in got[str(photos / "truncated.png")].error
    local_files, ray_files = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert len(local_files) == 20  # 10 images x mask, color
    assert ray_files == local_files


def test_summary_manifest_resume_and_overwrite(
    ray_instance: None, seg_model: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = _ray_run(str(seg_model), [str(photos)], out, summary=out / "run.parquet")
    rows = sr.read_summary(out / "run.parquet")
    assert len(rows) == len(first) == 12
    assert {r["status"] for r in rows} == {"ok", "failed"}
    assert all(r["model"] == "tiny-seg" for r in rows)
    assert all('"mode": "resize"' in r["settings"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(sum(r["class_fractions"].values()) == pytest.approx(1, abs=1e-5) for r in ok)
    assert all(len(r["outputs"]) == 2 and all(Path(o).is_file() for o in r["outputs"]) for r in ok)
    failed = [r for r in rows if r["status"] == "failed"]
    assert all(r["error"].startswith(r["input"]) for r in failed)
    # the actors recorded every output in the folder's manifest, as the local job does
    manifest = Manifest.load(out)
    assert {rel_of(out, Path(o)) for r in ok for o in r["outputs"]} == manifest.recorded_outputs()
    assert all(manifest.owner(rel_of(out, Path(o))).state == "done" for r in ok for o in r["outputs"])

    one = out / "img1.png"
    stamp = os.stat(one).st_mtime_ns
    (out / "img2.png").unlink()
    again = _ray_run(str(seg_model), [str(photos)], out)  # default JSONL summary
    counts = {s: sum(r.status == s for r in again) for s in ("ok", "skipped", "failed")}
    assert counts == {"ok": 1, "skipped": 9, "failed": 2}
    by_input = {r.source.path.name: r for r in again}
    assert by_input["img2.png"].status == "ok" and by_input["img2.png"].written == [out / "img2.png"]
    assert os.stat(one).st_mtime_ns == stamp  # a skipped output is not rewritten
    firsts = {r.source.path.name: r for r in first}
    assert by_input["img1.png"].fractions == firsts["img1.png"].fractions  # from the manifest
    jsonl = sr.read_summary(out / sr.SUMMARY_NAME)
    assert sorted(r["status"] for r in jsonl) == sorted(r.status for r in again)

    forced = _ray_run(str(seg_model), [str(photos)], out, overwrite=True)
    assert sum(r.status == "ok" for r in forced) == 10


def test_file_uris_bundled_model_and_dataset(ray_instance: None, tmp_path: Path) -> None:
    photos = tmp_path / "in"
    for i, size in enumerate([(60, 80), (31, 47), (160, 160)]):
        _noise(photos / "deep" / f"p{i}.jpg", size, i)
    out = tmp_path / "out"
    ds = sr.segment_dataset(
        "unet-pets",
        [photos.as_uri()],
        out.as_uri(),
        recursive=True,
        actors=1,
        settings=RunSettings(),
        load_options={"precision": "int8"},
    )
    rows = sorted(ds.take_all(), key=lambda r: r["input"])
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [r["input"] for r in rows] == [(photos / "deep" / f"p{i}.jpg").as_uri() for i in range(3)]
    assert [(r["height"], r["width"]) for r in rows] == [(60, 80), (31, 47), (160, 160)]
    seg = load_segmenter("unet-pets", precision="int8")
    for i, row in enumerate(rows):
        mask = out / "deep" / f"p{i}.png"
        assert row["outputs"] == [str(mask)]
        expected = seg.segment(str(photos / "deep" / f"p{i}.jpg")).ids
        assert np.array_equal(np.asarray(Image.open(mask)), expected)
    assert set(rows[0]["class_fractions"]) == set(seg.class_names)


def test_bundled_model_travels_by_name_and_a_file_as_bytes(ray_instance: None, seg_model: Path) -> None:
    bundled = sr.ModelShipment.of(load_segmenter("unet-pets"))
    assert bundled.bundled is not None and bundled.data is None
    shipped = sr.ModelShipment.of(load_segmenter(seg_model))
    assert shipped.bundled is None and ray.get(shipped.data) == seg_model.read_bytes()
    reopened = shipped.open(1)
    image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(reopened.segment(image).ids, load_segmenter(seg_model).segment(image).ids)


def test_stop_ends_the_run_cleanly(ray_instance: None, seg_model: Path, photos: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    assert _ray_run(seg_model, [str(photos)], tmp_path / "out", stop=stop) == []
    assert not list((tmp_path / "out").rglob("*.png"))


def test_bad_arguments_are_clear_errors(ray_instance: None, seg_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        sr.segment_dataset(seg_model, [str(tmp_path / "missing")], tmp_path / "out")
    with pytest.raises(BadInputError, match="--actors 0"):
        sr.segment_dataset(seg_model, [str(tmp_path)], tmp_path / "out", actors=0)
    with pytest.raises(BadInputError, match="--save"):
        sr.segment_dataset(seg_model, [str(tmp_path)], tmp_path / "out", save=("nope",))
    with pytest.raises(BadInputError, match="--out s3://bucket/masks: outputs go to a local"):
        sr.segment_dataset(seg_model, [str(tmp_path)], "s3://bucket/masks")


def test_a_file_uri_goes_through_pyarrow_as_the_local_engine_reads_the_folder(
    ray_instance: None, seg_model: Path, photos: Path, tmp_path: Path
) -> None:
    """file:// is read through pyarrow.fs (the code that serves s3://), not as a local path."""
    uri = photos.as_uri()
    listed = sr.list_uri(uri, recursive=True)
    assert all(isinstance(s.fs, pafs.LocalFileSystem) and s.uri.startswith(uri + "/") for s in listed)
    seg = load_segmenter(seg_model)
    local = list(
        iter_segment_files(seg, [str(photos)], tmp_path / "local", save=SAVE, recursive=True, batch_size=4)
    )
    out = tmp_path / "ray"
    first = _ray_run(seg_model, [uri], out, batch_size=4)
    rows = {r["input"]: r for r in sr.read_summary(out / sr.SUMMARY_NAME)}
    assert len(rows) == len(first) == len(local) == 12
    for expected in local:
        row = rows[uri + "/" + expected.source.rel.as_posix()]  # named by its URI
        assert row["status"] == expected.status
        assert row["error"] == expected.error.replace(str(photos), uri)  # the decoder's words
    assert _outputs(out) == _outputs(tmp_path / "local")  # byte-identical masks, same tree
    assert set(Manifest.load(out).inputs) == {k for k, r in rows.items() if r["status"] == "ok"}

    again = _ray_run(seg_model, [uri], out, batch_size=4)
    assert sorted(r.status for r in again) == ["failed"] * 2 + ["skipped"] * 10


def test_uri_refusals_come_before_any_work(ray_instance: None, seg_model: Path, tmp_path: Path) -> None:
    _noise(tmp_path / "in" / "a.png", (6, 7), 0)
    _noise(tmp_path / "in" / "b.jpg", (6, 7), 1)
    out = tmp_path / "out"
    root = (tmp_path / "in").as_uri()
    assert [(s.uri, s.rel) for s in sr.list_uri(root + "/*.png")] == [(root + "/a.png", Path("a.png"))]
    with pytest.raises(BadInputError, match="no such file or folder"):
        sr.segment_dataset(seg_model, [root + "/missing"], out)
    with pytest.raises(BadInputError, match="the pattern matches no file"):
        sr.segment_dataset(seg_model, [root + "/*.gif"], out)
    with pytest.raises(BadInputError, match="--engine ray"):  # the local engine reads local paths
        list(iter_segment_files(load_segmenter(seg_model), [root], out))
    started = time.monotonic()
    with pytest.raises(BadInputError) as raised:  # no credentials, no network: one line, soon
        sr.segment_dataset(seg_model, ["s3://segen-edge-no-such-bucket/photos/"], out)
    assert time.monotonic() - started < 60
    message = str(raised.value)
    assert message.startswith("s3://segen-edge-no-such-bucket/photos/: cannot list (")
    assert "\n" not in message and message.endswith("check the URI, the credentials and the network")
    assert not out.exists()


def test_cli_engine_ray_writes_what_the_local_engine_writes(
    ray_instance: None, seg_model: Path, photos: Path, tmp_path: Path
) -> None:
    """`segen-edge segment --engine ray` on the running instance: same files, same exit code."""
    from typer.testing import CliRunner

    from segen_edge import cli

    runner = CliRunner()
    common = [str(photos), "-m", str(seg_model), "--save", ",".join(SAVE), "-r", "-d", "cpu"]
    local = runner.invoke(cli.app, ["segment", *common, "-o", str(tmp_path / "local")])
    remote = runner.invoke(cli.app, ["segment", *common, "-o", str(tmp_path / "ray"), "--engine", "ray"])
    assert local.exit_code == remote.exit_code == 1  # two bad files: failed rows, not a failed job
    assert remote.stderr.count("error: ") == local.stderr.count("error: ") == 2
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
    again = runner.invoke(cli.app, ["segment", *common, "-o", str(tmp_path / "ray"), "--engine", "ray"])
    assert "0 segmented, 10 skipped" in again.stderr
