"""The streaming pipeline: lanes (several runs at once) change nothing but speed."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import solid

from segen_edge.generate_job import generate_files
from segen_edge.jobs import iter_segment_files
from segen_edge.loading import load
from segen_edge.pipeline import cpu_count, lanes_for, ordered_map


def test_ordered_map_keeps_order_and_bounds_work_in_flight() -> None:
    in_flight, peak, lock = 0, 0, threading.Lock()

    def slow(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(random.random() / 500)
        with lock:
            in_flight -= 1
        return i * i

    with ThreadPoolExecutor(4) as pool:
        assert list(ordered_map(slow, range(60), pool, window=3)) == [i * i for i in range(60)]
    assert peak <= 3


def test_lanes_split_the_cores_on_the_cpu_engines() -> None:
    for engine in ("cpu", "openvino", "openvino-runtime"):
        assert lanes_for(engine, None) == cpu_count()
        assert lanes_for(engine, cpu_count()) == 1
        assert lanes_for(engine, 10_000) == 1
    assert lanes_for("cuda", None) == 2


def test_a_job_of_fewer_runs_than_cores_shares_the_cores(monkeypatch) -> None:
    from segen_edge import pipeline

    monkeypatch.setattr(pipeline, "cpu_count", lambda: 8)
    assert pipeline.batch_threads(None) == 1  # unknown size: one thread a lane
    assert pipeline.batch_threads(None, runs=1) == 8  # one photo: every core on it
    assert pipeline.batch_threads(None, runs=3) == 2
    assert pipeline.batch_threads(None, runs=8) == pipeline.batch_threads(None, runs=100) == 1
    assert pipeline.batch_threads(3, runs=1) == 3  # the user's --threads stands
    assert pipeline.lanes_for("cpu", pipeline.batch_threads(None, runs=3)) == 4


def _segment(model: Path, folder: Path, out: Path, lanes: int) -> list[tuple[str, str, bytes]]:
    segmenter = load(str(model), task="segment", device="cpu", threads=1)
    results = iter_segment_files(segmenter, [str(folder)], out, batch_size=2, lanes=lanes)
    return [(r.source.path.name, r.status, r.outputs[0].read_bytes() if r.outputs else b"") for r in results]


@pytest.mark.parametrize("lanes", [2, 3])
def test_segment_lanes_give_the_same_files_in_input_order(
    seg_model: Path, tmp_path: Path, lanes: int
) -> None:
    folder = tmp_path / "in"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i in range(11):
        solid(folder / f"img{i:02d}.png", colours[i % 3], size=(9 + i, 14))
    (folder / "img05.png").write_bytes(b"broken")  # a failure mid-batch
    one = _segment(seg_model, folder, tmp_path / "one", 1)
    many = _segment(seg_model, folder, tmp_path / "many", lanes)
    assert many == one
    assert [name for name, _, _ in many] == sorted(p.name for p in folder.iterdir())
    assert [status for _, status, _ in many].count("failed") == 1


def test_generate_lanes_give_the_same_images(gen_model: Path) -> None:
    generator = load(str(gen_model), task="generate", device="cpu", threads=1)
    one = np.concatenate(list(generator.iter_batches(37, seed=3, batch_size=5, lanes=1)))
    many = np.concatenate(list(generator.iter_batches(37, seed=3, batch_size=5, lanes=3)))
    np.testing.assert_array_equal(one, generator.generate(37, seed=3, batch_size=8))
    assert one.shape[0] == 37
    np.testing.assert_array_equal(one, many)


def test_generate_files_in_lanes_write_the_same_files_and_keep_existing(
    gen_model: Path, tmp_path: Path
) -> None:
    generator = load(str(gen_model), task="generate", device="cpu", threads=1)
    runs = {}
    for lanes in (1, 3):
        out = tmp_path / f"lanes{lanes}"
        files = list(generate_files(generator, 23, out, seed=5, name="g", batch_size=4, lanes=lanes))
        assert [f.path.name for f in files] == [f"g-s5-{i:05d}.png" for i in range(23)]
        assert all(f.written for f in files)
        runs[lanes] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert runs[1] == runs[3]
    kept = tmp_path / "lanes3" / "g-s5-00007.png"
    kept.write_bytes(b"mine")
    again = list(generate_files(generator, 23, tmp_path / "lanes3", seed=5, name="g", batch_size=4, lanes=3))
    assert [f.written for f in again].count(False) == 23  # all exist: none rewritten
    assert kept.read_bytes() == b"mine"
