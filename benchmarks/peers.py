"""segen-edge against every runtime a user could pick instead, side by side in ONE run.

For each model: Keras fp32, TFLite fp32 and int8, onnxruntime CPU fp32 and int8, onnxruntime
with its OpenVINO EP (onnxruntime-openvino: fp32, int8, and bf16 where the CPU has
AVX512-BF16 or AMX), OpenVINO's own runtime (the `openvino` package), and
segen-edge's own engine with `--device auto --precision auto` (which chooses among the CPU
engines installed: onnxruntime's CPU EP, its OpenVINO EP, OpenVINO's runtime). Printed per
runtime: latency p50/p90 at batch 1, throughput at batch 8 (16 for generators), speed-up
against Keras, against the fastest peer and against the fastest *accurate* peer (>= 99% of
pixels agreeing with fp32; a mean pixel difference <= 1 for generators), and agreement with
Keras fp32 (the fraction of pixels whose class agrees, on real held-out pets images, for
segmenters; the mean absolute pixel difference for generators).

Models: the bundled ones (their Keras checkpoints come from the run directories that
scripts/build_models.sh writes; without one, the Keras/TFLite rows are skipped), and
random-weight models of the seed's shapes: U-Net 32-512 filters at 256x256, FCN-8s at
256x256 and the DCGAN generator at 32x32.

    python benchmarks/peers.py                      # everything (about 10 minutes on 2 cores)
    python benchmarks/peers.py --only seed-unet256 --threads 2 --json peers.json

Needs the train extra (TensorFlow); the OpenVINO EP rows need onnxruntime-openvino in place
of onnxruntime, the OpenVINO rows `pip install openvino`. Rows of engines not installed say
so on stderr and are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segen_edge import zoo  # noqa: E402
from segen_edge.errors import SegenError  # noqa: E402
from segen_edge.evaluate import find_data  # noqa: E402
from segen_edge.images import load_image, preprocess  # noqa: E402
from segen_edge.metadata import ModelInfo  # noqa: E402
from segen_edge.onnxmeta import read_metadata  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]  # NHWC float32 (or latents) -> NHWC output


@dataclass
class Engine:
    run: Runner  # one batch at a time: latency
    stream: Callable[[list[np.ndarray]], None] | None = None  # many batches its own way: throughput

    def throughput(self, batch: np.ndarray, seconds: float = 1.0) -> float:
        """Images per second over a stream of copies of `batch` lasting about `seconds`
        (after a warm-up), so thread start-up is noise even for a 0.1 ms generator."""
        go = self.stream or (lambda xs: [self.run(x) for x in xs])
        go([batch, batch])
        start = time.perf_counter()
        go([batch])
        count = int(np.clip(seconds / max(time.perf_counter() - start, 1e-6), 4, 5000))
        batches = [batch] * count
        start = time.perf_counter()
        go(batches)
        return len(batch) * count / (time.perf_counter() - start)


@dataclass
class Case:
    name: str
    info: ModelInfo
    keras_model: Any | None
    fp32: Path
    int8: Path | None
    segen_spec: str  # what `segen-edge --model` gets
    real_inputs: np.ndarray  # for agreement
    calib: np.ndarray  # for TFLite int8
    rows: list[dict[str, Any]] = field(default_factory=list)


# -- runners ---------------------------------------------------------------------------------


def keras_runner(model: Any) -> Engine:
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return Engine(lambda x: np.asarray(forward(tf.constant(x))))


def tflite_runner(model: Any, calib: np.ndarray | None, threads: int) -> Engine:
    """fp32 (calib None) or full-integer int8 with float input/output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calib is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative() -> Any:
            for sample in calib:
                yield [sample[None]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel
        blob = converter.convert()
    interpreters: dict[int, Any] = {}

    def run(x: np.ndarray) -> np.ndarray:
        batch = x.shape[0]
        if batch not in interpreters:
            interp = tf.lite.Interpreter(model_content=blob, num_threads=threads)
            index = interp.get_input_details()[0]["index"]
            interp.resize_tensor_input(index, list(x.shape))
            interp.allocate_tensors()
            interpreters[batch] = interp
        interp = interpreters[batch]
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))

    return Engine(run)


def to_model_layout(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """NHWC model values (or latents) -> the graph's input layout."""
    if info.task == "segment" and info.layout == "NCHW":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(x, dtype=np.float32)


def _layout(info: ModelInfo, fn: Callable[[np.ndarray], np.ndarray]) -> Runner:
    """Wrap a model-layout function so it takes and returns NHWC like every other runner."""
    return lambda x: info.preprocessing.to_nhwc(fn(to_model_layout(x, info)))


def ort_runner(path: Path, info: ModelInfo, threads: int) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return Engine(_layout(info, lambda x: session.run(None, {name: x})[0]))


def ort_openvino_runner(path: Path, info: ModelInfo, threads: int, bf16: bool = False) -> Engine | None:
    """onnxruntime with its OpenVINO EP (onnxruntime-openvino), as segen-edge opens it; None
    when this onnxruntime has no OpenVINO EP (the cpu extra)."""
    from segen_edge.providers import openvino_builtin
    from segen_edge.session import create_session

    if not openvino_builtin():
        return None
    loaded = create_session(path, "openvino", threads, bf16=bf16)
    name = loaded.input_name
    return Engine(_layout(info, lambda x: loaded.session.run(None, {name: x})[0]))


def openvino_runner(path: Path, info: ModelInfo, threads: int) -> Engine | None:
    """OpenVINO as its documentation suggests: the LATENCY hint for one request at a time,
    the THROUGHPUT hint with an AsyncInferQueue (several requests in flight) for streams."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    model = core.read_model(str(path))
    compiled: dict[tuple[Any, ...], Any] = {}

    def compile_for(shape: tuple[int, ...], hint: str) -> Any:
        if (shape, hint) not in compiled:
            m = model.clone()
            m.reshape({m.inputs[0].get_any_name(): list(shape)})
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
            compiled[shape, hint] = core.compile_model(m, "CPU", config)
        return compiled[shape, hint]

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(compile_for(x.shape, "LATENCY")(x)[0])

    def stream(batches: list[np.ndarray]) -> None:
        inputs = [to_model_layout(x, info) for x in batches]
        queue = ov.AsyncInferQueue(compile_for(inputs[0].shape, "THROUGHPUT"))
        for x in inputs:
            queue.start_async(x)
        queue.wait_all()

    return Engine(_layout(info, run), stream)


def segen_runner(spec: str, task: str, threads: int, big: int, tune: bool) -> tuple[Engine, str]:
    """segen-edge's engine: one run over every core for latency (chosen for batch 1); for a
    stream of batches of `big`, what `segment`/`generate` do (lanes: runs side by side, one
    thread each, on the CPU; chosen for that batch size). `tune`: first `segen-edge tune`
    the model at batch 1 and `big`, so auto chooses from this machine's timings."""
    from segen_edge import tuning
    from segen_edge.loading import load
    from segen_edge.pipeline import lanes_for
    from segen_edge.providers import cpu_providers

    if tune:
        providers = cpu_providers()
        tuning.tune(zoo.resolve(spec, task), providers, (1, big))
    model = load(spec, device="auto", precision="auto", threads=threads, task=task, batch_size=1)
    lane_model = load(spec, device="auto", precision="auto", threads=1, task=task, batch_size=big)
    lanes = lanes_for(lane_model.provider, 1)

    def stream(batches: list[np.ndarray]) -> None:
        inputs = (to_model_layout(x, lane_model.info) for x in batches)
        for _ in lane_model.run_many(inputs, lanes):
            pass

    how = (
        f"{'tuned' if tune else 'export figures'}: b1 {model.provider} {model.info.precision}, "
        f"b{big} {lane_model.provider} {lane_model.info.precision} x{lanes} lane{'s' if lanes > 1 else ''}"
    )
    return Engine(_layout(model.info, model.run), stream), how


def bf16_available() -> bool:
    from segen_edge.providers import has_bf16, openvino_builtin

    return openvino_builtin() and has_bf16()


# -- measuring -------------------------------------------------------------------------------


def latency(
    run: Runner, x: np.ndarray, runs: int, warmup_s: float = 0.1, block_s: float = 0.25
) -> np.ndarray:
    """ms per call of `run(x)`: after `warmup_s` of calls (at least 3), `runs` calls or as
    many as fill `block_s`, so a 0.5 ms generator gets hundreds of samples, not five."""
    start = time.perf_counter()
    for i in range(1_000_000):
        run(x)
        if i >= 2 and time.perf_counter() - start >= warmup_s:
            break
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < runs or time.perf_counter() - begin < block_s:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def agreement(case: Case, output: np.ndarray, reference: np.ndarray) -> float:
    if case.info.task == "segment":
        return float(np.mean(output.argmax(-1) == reference.argmax(-1)))
    scale = 1.0 / case.info.pixel_scale
    return float(np.mean(np.abs(output - reference)) * scale)  # mean |pixel difference|


def bench_case(case: Case, threads: int, runs: int, tune: bool = True, rounds: int = 6) -> None:
    info = case.info
    rng = np.random.default_rng(0)
    big = 16 if info.task == "generate" else 8
    if info.task == "generate":
        one = rng.standard_normal((1, info.latent_size), dtype=np.float32)
        many = rng.standard_normal((big, info.latent_size), dtype=np.float32)
    else:
        one, many = case.real_inputs[:1], np.resize(case.real_inputs, (big, *case.real_inputs.shape[1:]))
    runners: list[tuple[str, Callable[[], Engine | None]]] = []
    if case.keras_model is not None:
        runners += [
            ("keras fp32", lambda: keras_runner(case.keras_model)),
            ("tflite fp32", lambda: tflite_runner(case.keras_model, None, threads)),
            ("tflite int8", lambda: tflite_runner(case.keras_model, case.calib, threads)),
        ]
    runners.append(("onnxruntime fp32", lambda: ort_runner(case.fp32, info, threads)))
    if case.int8 is not None:
        runners.append(("onnxruntime int8", lambda: ort_runner(case.int8, info, threads)))
    runners.append(("ort+openvino EP fp32", lambda: ort_openvino_runner(case.fp32, info, threads)))
    if case.int8 is not None:
        runners.append(("ort+openvino EP int8", lambda: ort_openvino_runner(case.int8, info, threads)))
    if bf16_available():
        runners.append(
            ("ort+openvino EP bf16", lambda: ort_openvino_runner(case.fp32, info, threads, bf16=True))
        )
    else:
        print("  ort+openvino EP bf16: this CPU has no AVX512-BF16/AMX, skipped", file=sys.stderr)
    runners.append(("openvino fp32", lambda: openvino_runner(case.fp32, info, threads)))
    if case.int8 is not None:
        runners.append(("openvino int8", lambda: openvino_runner(case.int8, info, threads)))
    engines: list[tuple[str, Engine, np.ndarray]] = []
    for label, make in [*runners, ("segen-edge auto", lambda: None)]:
        try:
            if label == "segen-edge auto":
                engine, how = segen_runner(case.segen_spec, info.task, threads, big, tune)
                label = f"segen-edge auto ({how})"
            else:
                made = make()
                if made is None:
                    print(f"  {label}: not installed, skipped", file=sys.stderr)
                    continue
                engine = made
            out = np.concatenate(
                [engine.run(case.real_inputs[i : i + 1]) for i in range(len(case.real_inputs))]
            )
        except Exception as exc:  # a peer that cannot run this model is reported, not fatal
            print(f"  {label}: failed ({str(exc).splitlines()[0][:120]})", file=sys.stderr)
            continue
        engines.append((label, engine, out))
    if not engines:
        return
    # Round robin: every engine is timed in each of `rounds` rounds, so a slow spell of a
    # shared machine hits them all alike instead of whichever ran during it; each round in
    # its own seeded order, so no engine always follows the same one's burst.
    times: dict[str, list[np.ndarray]] = {label: [] for label, _, _ in engines}
    rates: dict[str, list[float]] = {label: [] for label, _, _ in engines}
    order = np.random.default_rng(len(engines))
    for _ in range(rounds):
        for i in order.permutation(len(engines)):
            label, engine, _ = engines[i]
            times[label].append(latency(engine.run, one, max(5, runs // rounds)))
            rates[label].append(engine.throughput(many))
    reference = engines[0][2]  # Keras fp32, else onnxruntime fp32
    for label, _, out in engines:
        ms1 = np.concatenate(times[label])
        case.rows.append(
            {
                "model": case.name,
                "runtime": label,
                "p50_ms": float(np.percentile(ms1, 50)),
                "p90_ms": float(np.percentile(ms1, 90)),
                "batch": big,
                "throughput": float(np.median(rates[label])),
                "agreement": agreement(case, out, reference),
                # per round, so a ratio can be shown with its spread over the rounds
                "round_p50_ms": [float(np.median(t)) for t in times[label]],
                "round_throughput": [float(x) for x in rates[label]],
            }
        )
        print(f"  {label}: p50 {case.rows[-1]['p50_ms']:.2f} ms", file=sys.stderr)
    by_label = {label: engine for label, engine, _ in engines}
    for row in case.rows:
        if row["runtime"].startswith("segen-edge"):
            row.update(duel_fastest_accurate(case, by_label, one, many))


def accurate_peers(case: Case, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the peers (not segen-edge) that clear the issue's bar."""
    return [
        r for r in rows if not r["runtime"].startswith("segen-edge") and accurate_enough(case, r["agreement"])
    ]


def duel_fastest_accurate(
    case: Case, engines: dict[str, Engine], one: np.ndarray, many: np.ndarray, pairs: int = 10
) -> dict[str, Any]:
    """segen-edge against the fastest accurate peer of the rounds (at batch 1 and at batch
    N), head to head: `pairs` pairs of short blocks back to back, who goes first
    alternating, and the median of the pairs' ratios. On a shared 2-core VM whose speed
    swings by 2x within a minute (the same OpenVINO stream measured 71-138 images/s in
    consecutive seconds), only side-by-side pairs tell a 5% gap from noise."""
    accurate = accurate_peers(case, case.rows)
    segen = next(((lab, e) for lab, e in engines.items() if lab.startswith("segen-edge")), None)
    if segen is None or not accurate:
        return {}
    fastest = min(accurate, key=lambda r: r["p50_ms"])["runtime"]
    busiest = max(accurate, key=lambda r: r["throughput"])["runtime"]
    peer1, peerb = (fastest, engines[fastest]), (busiest, engines[busiest])
    b1: list[float] = []
    bn: list[float] = []
    for i in range(pairs):
        first, second = (segen, peer1) if i % 2 == 0 else (peer1, segen)
        ms = {
            lab: float(np.median(latency(e.run, one, 5, warmup_s=0.05, block_s=0.2)))
            for lab, e in (first, second)
        }
        b1.append(ms[peer1[0]] / ms[segen[0]])
        first, second = (segen, peerb) if i % 2 == 0 else (peerb, segen)
        ips = {lab: e.throughput(many, seconds=0.4) for lab, e in (first, second)}
        bn.append(ips[segen[0]] / ips[peerb[0]])
    return {
        "duel_b1_peer": peer1[0],
        "duel_b1": b1,
        "duel_bN_peer": peerb[0],
        "duel_bN": bn,
    }


# -- cases -----------------------------------------------------------------------------------


def real_inputs(info: ModelInfo, folder: Path, stems: list[str] | None, count: int) -> np.ndarray:
    """Up to `count` labelled images of `folder` (the held-out ones first), preprocessed."""
    from segen_edge.masks import find_pairs

    pairs = find_pairs(folder)
    if stems:
        wanted = set(stems)
        pairs = [p for p in pairs if p.stem in wanted] + [p for p in pairs if p.stem not in wanted]
    return np.stack([preprocess(load_image(p.image, info.channels).image_u8, info) for p in pairs[:count]])


def bundled_cases(runs_dir: Path, data: Path, count: int, only: list[str] | None = None) -> list[Case]:
    from export.convert import load_keras

    cases = []
    for name, ref in zoo.bundled_models().items():
        if only and name not in only:
            continue
        fp32 = ref.files.get("fp32")
        int8 = ref.files.get("int8")
        source = fp32 or int8 or next(iter(ref.files.values()))
        info = ModelInfo.from_props(read_metadata(source))
        keras_file = runs_dir / name / ("generator.keras" if info.task == "generate" else "model.keras")
        keras_model = load_keras(keras_file) if keras_file.exists() else None
        if fp32 is None:
            if keras_model is None:
                print(f"{name}: no fp32 file and no Keras checkpoint; skipped", file=sys.stderr)
                continue
            fp32 = export_fp32(keras_model, info)
        if info.task == "segment":
            try:  # the card's data set, found as `segen-edge evaluate` finds it
                folder = find_data(info.card.get("data"), name)
            except SegenError:
                folder = data
            real = real_inputs(info, folder, info.card.get("held_out"), count)
        else:
            real = np.random.default_rng(1).standard_normal((count, info.latent_size), dtype=np.float32)
        cases.append(Case(name, info, keras_model, fp32, int8, name, real, real[: min(len(real), 32)]))
    return cases


_TMP = tempfile.mkdtemp(prefix="segen-peers-")


def export_fp32(keras_model: Any, info: ModelInfo) -> Path:
    import onnx

    from export.convert import convert
    from segen_edge.metadata import stamp_onnx

    proto = convert(keras_model, info)
    stamp_onnx(proto, info.replace(layout="NCHW"))
    path = Path(_TMP) / f"{info.name}-fp32.onnx"
    onnx.save(proto, str(path))
    return path


def export_int8(fp32: Path, info: ModelInfo, calib: np.ndarray) -> Path:
    import onnx

    from export.calibrate import ArrayReader
    from export.quantize import Int8Quantizer
    from segen_edge.metadata import stamp_onnx

    work = Path(tempfile.mkdtemp(dir=_TMP))
    model_info = ModelInfo.from_props(read_metadata(fp32))
    reader = ArrayReader(onnx.load(str(fp32)).graph.input[0].name, calib, model_info)
    proto = Int8Quantizer(onnx.load(str(fp32)), reader, "minmax", work).quantize()
    stamp_onnx(proto, model_info.replace(precision="int8"))
    path = Path(_TMP) / f"{info.name}-int8.onnx"
    onnx.save(proto, str(path))
    return path


def seed_cases(data: Path, count: int, only: list[str] | None = None) -> list[Case]:
    import keras

    from segen_edge.masks import default_palette
    from train.models.dcgan import build_generator
    from train.models.fcn import build_fcn
    from train.models.unet import build_unet

    keras.utils.set_random_seed(0)
    classes = ("pet", "background", "border")
    seg = dict(task="segment", image_size=(256, 256), class_names=classes, palette=default_palette(3))
    specs = [
        (
            "seed-unet256",
            build_unet((256, 256), 3, depth=4, base_filters=32),
            ModelInfo(arch="unet", name="seed-unet256", **seg),
        ),
        (
            "seed-fcn256",
            build_fcn((256, 256), 3, base_filters=32, variant="8s"),
            ModelInfo(arch="fcn8s", name="seed-fcn256", **seg),
        ),
        (
            "seed-dcgan32",
            build_generator(100, 32, 1, 64),
            ModelInfo(
                task="generate",
                arch="dcgan",
                name="seed-dcgan32",
                image_size=(32, 32),
                channels=1,
                latent_size=100,
                pixel_scale=1 / 127.5,
                pixel_offset=-1.0,
            ),
        ),
    ]
    cases = []
    for name, model, info in specs:
        if only and name not in only:
            continue
        if info.task == "segment":
            real = real_inputs(info, data, None, count)
        else:
            real = np.random.default_rng(1).standard_normal((count, info.latent_size), dtype=np.float32)
        fp32 = export_fp32(model, info)
        int8 = export_int8(fp32, info, real[:16])
        info = ModelInfo.from_props(read_metadata(fp32))  # the layout the export chose
        # segen-edge gets the float export with the unchecked int8 file beside it, as a user
        # of another quantizer has them; auto must not run an int8 file nothing has checked
        cases.append(Case(name, info, model, fp32, int8, str(fp32), real, real[:16]))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs", help="training run directories")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pets")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=40, help="timed runs at batch 1")
    parser.add_argument("--images", type=int, default=24, help="real images for agreement")
    parser.add_argument("--rounds", type=int, default=6, help="round-robin rounds (engines rotated)")
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--skip-seed", action="store_true", help="bundled models only")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="auto from the export's figures only (default: `segen-edge tune` each model first, "
        "into a temporary cache folder)",
    )
    args = parser.parse_args()
    if args.tune:
        os.environ["SEGEN_EDGE_CACHE"] = tempfile.mkdtemp(prefix="segen-peers-cache-")

    cases = bundled_cases(args.runs_dir, args.data, args.images, args.only)
    if not args.skip_seed:
        cases += seed_cases(args.data, args.images, args.only)
    if args.only:
        cases = [c for c in cases if c.name in args.only]
    rows = []
    for case in cases:
        print(f"{case.name}:", file=sys.stderr)
        bench_case(case, args.threads, args.runs, args.tune, args.rounds)
        rows += report(case)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def accurate_enough(case: Case, agreement: float) -> bool:
    if case.info.task == "segment":
        return agreement >= 0.99
    return agreement <= 1.0


def report(case: Case) -> list[dict[str, Any]]:
    rows = case.rows
    if not rows:
        return rows
    keras_row = next((r for r in rows if r["runtime"] == "keras fp32"), None)
    peers = [r for r in rows if not r["runtime"].startswith("segen-edge")]
    best1 = min(r["p50_ms"] for r in peers)
    bestb = max(r["throughput"] for r in peers)
    # the bar: a peer counts as "accurate" at >= 99% pixel agreement with fp32 (a mean
    # pixel difference of at most 1 of 255 for generators); auto is held to the same bar
    accurate = accurate_peers(case, rows) or peers
    best1_ok = min(r["p50_ms"] for r in accurate)
    bestb_ok = max(r["throughput"] for r in accurate)
    peer1 = min(accurate, key=lambda r: r["p50_ms"])
    peerb = max(accurate, key=lambda r: r["throughput"])
    unit = "agree" if case.info.task == "segment" else "|px diff|"
    print(
        f"\n{case.name} ({case.info.task}, {'x'.join(map(str, case.info.image_size))}, {len(case.real_inputs)} real inputs)"
    )
    print(
        f"{'runtime':<34} {'p50 ms':>8} {'p90 ms':>8} {'img/s@' + str(rows[0]['batch']):>10} "
        f"{'vs keras':>9} {'vs best peer b1':>16} {'vs best peer bN':>16} {'vs accurate b1':>15} "
        f"{'vs accurate bN':>15} {unit:>10}"
    )
    for r in rows:
        vs_keras = f"{keras_row['p50_ms'] / r['p50_ms']:.2f}x" if keras_row else "-"
        r["speedup_vs_keras"] = keras_row["p50_ms"] / r["p50_ms"] if keras_row else None
        r["speedup_vs_best_peer_b1"] = best1 / r["p50_ms"]
        r["speedup_vs_best_peer_bN"] = r["throughput"] / bestb
        r["speedup_vs_accurate_peer_b1"] = best1_ok / r["p50_ms"]
        r["speedup_vs_accurate_peer_bN"] = r["throughput"] / bestb_ok
        r["accurate"] = accurate_enough(case, r["agreement"])
        # the same ratios round by round (each round times every engine once, side by side):
        # their range says whether a gap is more than this machine's noise
        r["vs_accurate_b1_rounds"] = [
            p / m for p, m in zip(peer1["round_p50_ms"], r["round_p50_ms"], strict=True)
        ]
        r["vs_accurate_bN_rounds"] = [
            m / p for p, m in zip(peerb["round_throughput"], r["round_throughput"], strict=True)
        ]
        print(
            f"{r['runtime']:<34} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['throughput']:>10.1f} {vs_keras:>9} "
            f"{r['speedup_vs_best_peer_b1']:>15.2f}x {r['speedup_vs_best_peer_bN']:>15.2f}x "
            f"{r['speedup_vs_accurate_peer_b1']:>14.2f}x {r['speedup_vs_accurate_peer_bN']:>14.2f}x "
            f"{r['agreement']:>10.4f}{'' if r['accurate'] else ' (under the bar)'}"
        )
    for r in rows:
        if r["runtime"].startswith("segen-edge"):
            b1, bn = r["vs_accurate_b1_rounds"], r["vs_accurate_bN_rounds"]
            print(
                f"segen-edge auto against the fastest accurate peer, round by round: "
                f"b1 {min(b1):.2f}-{max(b1):.2f}x ({peer1['runtime']}), "
                f"bN {min(bn):.2f}-{max(bn):.2f}x ({peerb['runtime']}) over {len(b1)} rounds"
            )
            if r.get("duel_b1"):
                print(
                    f"head to head, {len(r['duel_b1'])} pairs of blocks back to back (median, quartiles): "
                    f"b1 {_spread(r['duel_b1'])} vs {r['duel_b1_peer']}, "
                    f"bN {_spread(r['duel_bN'])} vs {r['duel_bN_peer']}"
                )
    return rows


def _spread(ratios: list[float]) -> str:
    q1, q2, q3 = np.percentile(ratios, [25, 50, 75])
    return f"{q2:.2f}x ({q1:.2f}-{q3:.2f})"


if __name__ == "__main__":
    main()
