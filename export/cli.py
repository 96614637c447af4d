"""`segen-edge export RUN_DIR ...` and `python -m export RUN_DIR ...`.

Parses, calls export.exporter.export_run, prints the table (or JSON) on stdout and progress
on stderr. TensorFlow and onnxruntime are imported only once the arguments are valid.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from segen_edge.errors import SegenError

PRECISIONS = ("fp32", "fp16", "int8")
METHODS = ("minmax", "entropy", "percentile")
OVER_BUDGET = 3  # exit status: files written, but int8 over --max-drop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segen-edge export",
        description="Export a training run to ONNX (fp32, fp16, int8), verified against Keras "
        "and measured on the run's held-out data.",
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="training run folder (model_info.json + model.keras/generator.keras)",
    )
    parser.add_argument(
        "--precision",
        default="fp32,fp16,int8",
        help="comma-separated precisions to write (default: fp32,fp16,int8)",
    )
    parser.add_argument(
        "--calib",
        type=Path,
        default=None,
        metavar="DIR",
        help="calibration images for int8 (default: the run's training data, held-out images excluded)",
    )
    parser.add_argument(
        "--calib-count",
        type=int,
        default=100,
        metavar="N",
        help="calibration images (or generator latents) to use (default: 100)",
    )
    parser.add_argument(
        "--calib-method",
        choices=METHODS,
        default="minmax",
        help="int8 range calibration tried first; the others are tried before "
        "any node is left in float (default: minmax)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default: RUN_DIR/onnx)"
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="largest mIoU loss int8 may have vs fp32 before layers are kept in "
        "float (generators: mean absolute pixel difference / 255) (default: 0.01)",
    )
    parser.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8 weights in 7 bits for the CPU EP: onnxruntime's u8s8 kernels "
        "saturate on x86 CPUs without VNNI (AVX2 only), which costs more accuracy "
        "than the lost bit (default: on exactly where this CPU has no VNNI; the "
        "OpenVINO int8 file always has full 8-bit weights)",
    )
    parser.add_argument(
        "--speed-search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time int8 variants that keep the highest-resolution layers in "
        "float (where int8 kernels can be slower than fp32) and keep the "
        "fastest (default: on)",
    )
    parser.add_argument(
        "--simplify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rewrite up-convolutions whose kernel equals their stride as Conv 1x1 + "
        "DepthToSpace (int8 kernels on the CPU EP; tf2onnx's Slice/Pad after each dropped), "
        "kept only where the rewritten graph matches the converted one (default: on)",
    )
    parser.add_argument(
        "--name", default=None, help="file name prefix, <name>-<precision>.onnx (default: the run's name)"
    )
    parser.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        default="NCHW",
        help="tensor layout of the ONNX input/output (default: NCHW, the faster "
        "graph for onnxruntime on CPU)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest |ONNX - Keras| accepted after conversion (default: 1e-4)",
    )
    parser.add_argument(
        "--eval-limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate on the first N held-out images only (default: all)",
    )
    parser.add_argument(
        "--latency-runs", type=int, default=30, metavar="N", help="timed runs per precision (default: 30)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        print(
            f"error: --precision {args.precision!r}: expected a comma-separated list of "
            f"{', '.join(PRECISIONS)}",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        from .exporter import ExportOptions, export_run

        options = ExportOptions(
            run_dir=args.run_dir,
            precisions=precisions,
            calib_dir=args.calib,
            calib_count=args.calib_count,
            calib_method=args.calib_method,
            out_dir=args.out,
            max_drop=args.max_drop,
            reduce_range=args.reduce_range,
            speed_search=args.speed_search,
            simplify=args.simplify,
            name=args.name,
            layout=args.layout,
            overwrite=args.overwrite,
            tolerance=args.tolerance,
            latency_runs=args.latency_runs,
            eval_limit=args.eval_limit,
            command=shlex.join(["segen-edge", "export", *argv]),
        )
        report = export_run(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except SegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(report.table())
        print(f"report: {report.report_path}")
    if not report.within_budget:
        print(
            f"error: the int8 file is OVER BUDGET (more than --max-drop {args.max_drop} below "
            "fp32 even with every candidate node in float); it is written and flagged in its "
            "card, and --precision auto never picks it",
            file=sys.stderr,
        )
        return OVER_BUDGET
    return 0
