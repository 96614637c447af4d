"""export/: tiny Keras models in a fake run folder -> ONNX fp32 / fp16 / int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
keras = pytest.importorskip("keras")

from PIL import Image  # noqa: E402

from export.cli import main  # noqa: E402
from export.errors import VerificationError  # noqa: E402
from export.measure import providers_here  # noqa: E402
from segen_edge.metadata import ModelInfo  # noqa: E402

SIZE = 32
STEMS = [f"img{i:02d}" for i in range(12)]
HELD_OUT = STEMS[:4]
# what export writes: with onnxruntime-openvino installed, also an int8 file made for it
WRITTEN = {"fp32", "fp16", "int8"} | ({"int8.openvino"} if "openvino" in providers_here() else set())

pytestmark = pytest.mark.slow  # converts and quantizes real Keras models


def _square_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy RGB image with a bright square, and its 0/1 mask."""
    image = rng.integers(0, 90, size=(SIZE, SIZE, 3)).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    top, left = rng.integers(2, SIZE - 14, size=2)
    side = int(rng.integers(8, 13))
    image[top : top + side, left : left + side] += 150
    mask[top : top + side, left : left + side] = 1
    return image, mask


def _tiny_unet() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    skip = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(skip)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(8, 2, strides=2)(x)
    x = keras.layers.Concatenate()([x, skip])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))


def _tiny_generator(latent: int) -> keras.Model:
    inputs = keras.Input((latent,))
    x = keras.layers.Dense(4 * 4 * 8, activation="relu")(inputs)
    x = keras.layers.Reshape((4, 4, 8))(x)
    x = keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh")(x)
    return keras.Model(inputs, x)


def read_props(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _write_info(run_dir: Path, info: ModelInfo) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model_info.json").write_text(json.dumps(info.to_dict()))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    images, masks = [], []
    for stem in STEMS:
        image, mask = _square_image(rng)
        Image.fromarray(image).save(data / "images" / f"{stem}.png")
        Image.fromarray(mask).save(data / "masks" / f"{stem}.png")
        images.append(image)
        masks.append(mask)
    keras.utils.set_random_seed(0)
    model = _tiny_unet()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(np.stack(images) / 255.0, np.stack(masks), epochs=30, batch_size=12, verbose=0)
    run_dir = root / "run"
    _write_info(
        run_dir,
        ModelInfo(
            task="segment",
            arch="unet",
            name="tiny-unet",
            image_size=(SIZE, SIZE),
            class_names=("background", "square"),
            palette=((0, 0, 0), (255, 255, 255)),
            card={"data": str(data), "mask_encoding": "index", "held_out": HELD_OUT, "seed": 0},
        ),
    )
    model.save(run_dir / "model.keras")
    return run_dir


@pytest.fixture(scope="module")
def seg_export(seg_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg-onnx")
    code = main([str(seg_run), "--out", str(out), "--calib-count", "50", "--latency-runs", "2"])
    assert code == 0
    return out


def test_writes_every_precision_and_a_report(seg_export: Path) -> None:
    for precision in ("fp32", "fp16", "int8"):
        assert (seg_export / f"tiny-unet-{precision}.onnx").is_file()
    report = json.loads((seg_export / "tiny-unet-export.json").read_text())
    rows = {row["precision"]: row for row in report["precisions"]}
    assert set(rows) == WRITTEN
    assert rows["fp32"]["agreement"] == 1.0
    assert rows["int8"]["agreement"] >= 0.97
    assert rows["fp32"]["miou"] - rows["int8"]["miou"] <= 0.01 or report["excluded_nodes"]
    assert report["calibration"]["count"] == 8  # 12 images, the 4 held out never calibrate
    timed = report["speed_search_ms"]  # fp32, all-int8, and int8 with the 32x32 level in float
    assert {"fp32", "int8", "int8, top 1 level(s) in float"} <= set(timed)
    assert len(report["float_for_speed"]) in (0, 3)  # nothing, or the three 32x32 convs
    assert report["verified_max_abs_diff"] <= 1e-4
    # the up-convolution runs as Conv 1x1 + DepthToSpace (int8 kernels on the CPU EP), and
    # tf2onnx's Slice/Pad after it is gone
    assert report["graph"] == "1 up-convolutions as Conv 1x1 + DepthToSpace, 1 Slice/Pad tails dropped"
    for precision in rows:
        ops = {n.op_type for n in onnx.load(str(seg_export / f"tiny-unet-{precision}.onnx")).graph.node}
        assert "DepthToSpace" in ops and not ops & {"ConvTranspose", "Slice", "Pad"}
    sizes = {p: (seg_export / f"tiny-unet-{p}.onnx").stat().st_size for p in rows}
    assert sizes["fp16"] < sizes["fp32"]
    assert all(rows[p]["size_bytes"] == sizes[p] for p in rows)  # the card's sizes are true
    cpu = report["providers"]["cpu"]["precisions"]  # measured through the runtime, per provider
    assert set(cpu) == {"fp32", "fp16", "int8"}
    assert all(set(r["latency_ms"]) == {"1", "8"} for r in cpu.values())
    assert cpu["fp32"]["metrics"]["agreement"] == 1.0 and cpu["fp32"]["within_budget"] is True
    assert cpu["int8"]["metrics"]["agreement"] == rows["int8"]["agreement"]
    assert report["calibration"]["reduce_range"] is True  # this CPU has no VNNI
    assert set(report["calibration"]["methods_tried"]) <= {"minmax", "entropy", "percentile"}


def test_export_measures_what_the_runtime_computes(seg_run: Path, seg_export: Path) -> None:
    """The card's agreement is what the runtime's Segmenter gives on the held-out images."""
    from segen_edge.images import load_image, resize_u8
    from segen_edge.loading import load

    report = json.loads((seg_export / "tiny-unet-export.json").read_text())
    data = Path(json.loads((seg_run / "model_info.json").read_text())["card"]["data"])
    models = {
        p: load(str(seg_export / f"tiny-unet-{p}.onnx"), device="cpu", precision=p, threads=1)
        for p in ("fp32", "int8")
    }
    same = total = 0
    for stem in HELD_OUT:
        image = resize_u8(load_image(data / "images" / f"{stem}.png").image_u8, (SIZE, SIZE))
        ids = {p: m.predict_batch(m.info.preprocessing.to_model(image[None]))[0] for p, m in models.items()}
        same += int(np.sum(ids["fp32"] == ids["int8"]))
        total += ids["fp32"].size
    agreement = report["providers"]["cpu"]["precisions"]["int8"]["metrics"]["agreement"]
    assert abs(same / total - agreement) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_metadata_round_trips(seg_export: Path, precision: str) -> None:
    path = seg_export / f"tiny-unet-{precision}.onnx"
    info = ModelInfo.from_props(read_props(path), source=str(path))
    assert (info.task, info.precision, info.layout) == ("segment", precision, "NCHW")
    assert info.class_names == ("background", "square")
    assert info.image_size == (SIZE, SIZE)
    assert info.card["held_out"] == HELD_OUT  # the training card is kept
    assert set(info.card["export"]["precisions"]) == WRITTEN
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["segen.precision"] == f'"{precision}"'


def _run(path: Path, batch_nchw: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch_nchw})[0]


def test_int8_is_close_to_fp32_and_size_is_dynamic(seg_export: Path) -> None:
    rng = np.random.default_rng(5)
    image = np.stack([_square_image(rng)[0] for _ in range(2)]).astype(np.float32) / 255.0
    batch = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    fp32 = _run(seg_export / "tiny-unet-fp32.onnx", batch)
    int8 = _run(seg_export / "tiny-unet-int8.onnx", batch)
    assert fp32.shape == (2, 2, SIZE, SIZE)
    error = np.mean((int8 - fp32) ** 2) / np.mean(fp32**2)
    assert error < 0.02
    assert np.mean(int8.argmax(1) == fp32.argmax(1)) > 0.97
    big = np.zeros((1, 3, 64, 48), np.float32)  # fully convolutional: any multiple of 2
    assert _run(seg_export / "tiny-unet-int8.onnx", big).shape == (1, 2, 64, 48)
    graph = onnx.load(str(seg_export / "tiny-unet-int8.onnx")).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)


def test_sensitivity_keeps_layers_in_float_until_within_budget(seg_run: Path, tmp_path: Path) -> None:
    # A negative budget can never be met: every weighted node ends up in float, in order.
    code = main(
        [
            str(seg_run),
            "--out",
            str(tmp_path),
            "--precision",
            "int8",
            "--max-drop",
            "-1",
            "--calib-count",
            "4",
            "--latency-runs",
            "1",
            "--name",
            "t",
            "--no-speed-search",
            "--no-simplify",
        ]
    )
    assert code == 3  # written, but over budget: a script notices
    report = json.loads((tmp_path / "t-export.json").read_text())
    assert report["within_budget"] is False
    assert set(report["calibration"]["methods_tried"]) == {"minmax", "entropy", "percentile"}
    assert report["providers"]["cpu"]["precisions"]["int8"]["within_budget"] is False
    graph = onnx.load(str(tmp_path / "t-int8.onnx")).graph
    float_nodes = [n for n in graph.node if n.name in report["excluded_nodes"]]
    float_convs = [n for n in float_nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert len(float_convs) == 5  # every conv, then the arithmetic (here: the Concat)
    assert report["graph"] == "as converted"  # --no-simplify: the ConvTranspose is still there
    assert [n.op_type for n in float_convs].count("ConvTranspose") == 1
    assert len(report["excluded_layers"]) == len(report["excluded_nodes"])
    float_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in float_weights for n in float_convs)  # weights not quantized
    assert not (tmp_path / "t-fp32.onnx").exists()  # fp32 was only the reference


def test_resolution_levels_put_the_largest_maps_first() -> None:
    from export.quantize import resolution_levels

    sizes = {"a": (8, 32, 32), "b": (16, 16, 16), "c": (8, 32, 32), "d": (2, 32, 32), "e": (64,)}
    assert resolution_levels(sizes) == [["a", "c", "d"], ["b"], ["e"]]


def test_generator_exports_with_seeded_latents(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    run_dir = tmp_path / "gan"
    _write_info(
        run_dir,
        ModelInfo(
            task="generate",
            arch="dcgan",
            name="tiny-gan",
            image_size=(16, 16),
            channels=1,
            pixel_scale=1 / 127.5,
            pixel_offset=-1.0,
            latent_size=8,
            card={"seed": 0},
        ),
    )
    _tiny_generator(8).save(run_dir / "generator.keras")
    code = main(
        [
            str(run_dir),
            "--precision",
            "fp16,int8",
            "--calib-count",
            "16",
            "--latency-runs",
            "1",
            "--eval-limit",
            "32",
        ]
    )
    assert code == 0
    report = json.loads((run_dir / "onnx" / "tiny-gan-export.json").read_text())
    rows = {row["precision"]: row for row in report["precisions"]}
    assert rows["fp32"]["mean_abs_diff"] == 0.0
    assert rows["fp16"]["mean_abs_diff"] < 1.0
    assert rows["int8"]["mean_abs_diff"] < 2.55  # the default budget: 1% of 255
    assert rows["fp32"]["psnr_db"] is None and rows["fp16"]["psnr_db"] > 30
    path = run_dir / "onnx" / "tiny-gan-int8.onnx"
    info = ModelInfo.from_props(read_props(path))
    assert (info.task, info.precision, info.latent_size) == ("generate", "int8", 8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"latents": np.zeros((3, 8), np.float32)})[0]
    assert out.shape == (3, 1, 16, 16)


def test_generator_with_an_infogan_code_exports_and_matches_keras(tmp_path: Path) -> None:
    """The code's argmax/one-hot converts in every precision; export's own check compares
    ONNX with Keras."""
    from train.models import build_generator

    keras.utils.set_random_seed(2)
    run_dir = tmp_path / "coded"
    info = ModelInfo(
        task="generate",
        arch="dcgan",
        name="coded",
        image_size=(32, 32),
        channels=1,
        pixel_scale=1 / 127.5,
        pixel_offset=-1.0,
        latent_size=8,
    )
    _write_info(run_dir, info)
    build_generator(8, 32, 1, filters=8, codes=4).save(run_dir / "generator.keras")
    assert (
        main(
            [
                str(run_dir),
                "--precision",
                "fp32,fp16,int8",
                "--calib-count",
                "16",
                "--latency-runs",
                "1",
                "--eval-limit",
                "16",
            ]
        )
        == 0
    )
    report = json.loads((run_dir / "onnx" / "coded-export.json").read_text())
    rows = {row["precision"]: row for row in report["precisions"]}
    assert rows["fp16"]["mean_abs_diff"] < 1.0 and rows["int8"]["mean_abs_diff"] < 2.55
    session = ort.InferenceSession(
        str(run_dir / "onnx" / "coded-fp32.onnx"), providers=["CPUExecutionProvider"]
    )
    latents = np.zeros((2, 8), np.float32)
    latents[0, 1] = latents[1, 3] = 1.0  # codes 1 and 3, the rest equal
    first, second = session.run(None, {"latents": latents})[0]
    assert np.abs(first - second).max() > 1e-3  # the code changes the image


def test_existing_files_need_overwrite(seg_run: Path, seg_export: Path, capsys) -> None:
    code = main([str(seg_run), "--out", str(seg_export), "--precision", "fp32"])
    assert code == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_broken_calibration_folder_is_a_clear_error(seg_run: Path, tmp_path: Path, capsys) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main([str(seg_run), "--calib", str(calib), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "a.png" in err and "calibration" in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any(ln.startswith("error") for ln in lines[:-1])


def test_empty_calibration_folder_is_a_clear_error(seg_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code = main([str(seg_run), "--calib", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "no images to calibrate on" in capsys.readouterr().err


def test_run_dir_without_a_model_is_a_clear_error(seg_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model_info.json").write_text((seg_run / "model_info.json").read_text())
    assert main([str(run_dir)]) == 1
    assert "no model.keras" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing")]) == 1
    assert "no such run folder" in capsys.readouterr().err


def test_verify_names_the_difference(seg_run: Path) -> None:
    from export.convert import convert, load_keras, verify

    model = load_keras(seg_run / "model.keras")
    info = ModelInfo.from_dict(json.loads((seg_run / "model_info.json").read_text()))
    proto = convert(model, info.replace(layout="NCHW"), "NCHW")
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    bias = next(t for t in proto.graph.initializer if t.name == last_conv.input[2])
    values = onnx.numpy_helper.to_array(bias) + 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    inputs = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    with pytest.raises(VerificationError, match=r"differ from Keras by up to 0\.01"):
        verify(model, proto, inputs, info.replace(layout="NCHW"))
