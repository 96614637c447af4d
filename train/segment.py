"""Train a segmenter (U-Net or FCN) on a folder of image/mask pairs into a run directory."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.images import load_image
from segen_edge.masks import (
    IGNORE_INDEX,
    count_classes,
    default_class_names,
    default_palette,
    detect_encoding,
    find_pairs,
)
from segen_edge.metadata import ModelInfo

from .data import Augment, SegmentationBatches, load_segmentation, scale_images, split_pairs
from .metrics import SegmentationValidator, cosine_schedule
from .models import build_fcn, build_unet
from .rundir import STATE, read_json, write_json

PIXEL_SCALE = 1.0 / 255.0
PIXEL_OFFSET = 0.0


def build_segmenter(args: argparse.Namespace, num_classes: int, channels: int) -> keras.Model:
    size = tuple(args.image_size)
    if args.arch == "unet":
        return build_unet(size, num_classes, channels, args.depth, args.base_filters,
                          args.dropout)
    return build_fcn(size, num_classes, channels, args.base_filters, args.variant, args.dropout)


def _arch_name(args: argparse.Namespace) -> str:
    return "unet" if args.arch == "unet" else f"fcn{args.variant}"


def _guess_channels(path: Path) -> int:
    image_u8 = load_image(path, channels=3).image_u8
    grey = np.array_equal(image_u8[..., 0], image_u8[..., 1]) and np.array_equal(
        image_u8[..., 0], image_u8[..., 2]
    )
    return 1 if grey else 3


def train_segmenter(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train per `args` (see train.cli); returns the run's model_info dict."""
    run_dir = Path(args.out)
    state: dict[str, Any] = {}
    if args.resume:
        if not (run_dir / STATE).is_file() or not (run_dir / "last.keras").is_file():
            raise BadInputError(f"{run_dir}: nothing to resume (no {STATE} or last.keras); "
                                "start the run without --resume")
        state = read_json(run_dir / STATE)
    elif (run_dir / "model.keras").exists() and not args.overwrite:
        raise BadInputError(f"{run_dir}: already holds a trained model; pass --resume to "
                            "continue it, --overwrite to start again, or another --out")
    keras.utils.set_random_seed(args.seed)

    data_dir = Path(args.data)
    pairs = find_pairs(data_dir)
    encoding = args.mask_encoding
    if encoding == "auto":
        encoding = detect_encoding([p.mask for p in pairs if p.mask is not None])
    channels = args.channels or _guess_channels(pairs[0].image)
    train_pairs, val_pairs = split_pairs(pairs, args.seed, args.val_fraction, args.val_count)
    if state.get("held_out") and state["held_out"] != [p.stem for p in val_pairs]:
        raise BadInputError(f"{run_dir}: --resume with another split than the run's; use the "
                            "run's --seed, --val-fraction/--val-count and --data")
    size = tuple(args.image_size)
    print(f"data: {len(train_pairs)} train / {len(val_pairs)} val pairs from {data_dir}, "
          f"masks '{encoding}', {channels} channel(s), {size[0]}x{size[1]}", flush=True)
    train = load_segmentation(train_pairs, size, channels, encoding)
    val = load_segmentation(val_pairs, size, channels, encoding)
    num_classes = count_classes([*train.masks, *val.masks], encoding)
    class_names = tuple(args.class_names) if args.class_names else default_class_names(
        encoding, num_classes)
    if len(class_names) != num_classes:
        raise BadInputError(f"--class-names gives {len(class_names)} names but the masks hold "
                            f"{num_classes} classes (ids 0..{num_classes - 1})")

    augment = Augment(hflip=True, vflip=args.vflip, max_zoom=args.max_zoom, jitter=args.jitter)
    repeats = args.repeats or max(1, math.ceil(args.min_samples / len(train_pairs)))
    batches = SegmentationBatches(train, args.batch_size, PIXEL_SCALE, PIXEL_OFFSET, augment,
                                  args.seed, repeats=repeats)
    val_images = scale_images(val.images_u8, PIXEL_SCALE, PIXEL_OFFSET)

    if state:
        model = keras.models.load_model(run_dir / "last.keras")
        initial_epoch = int(state["epochs_run"])
        batches.set_epoch(initial_epoch)
        print(f"resuming {run_dir} after epoch {initial_epoch}", flush=True)
    else:
        model = build_segmenter(args, num_classes, channels)
        model.compile(
            optimizer=keras.optimizers.Adam(args.lr),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=IGNORE_INDEX),
            jit_compile=False,
        )
        initial_epoch = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    state.setdefault("held_out", [p.stem for p in val_pairs])
    state["commands"] = [*state.get("commands", []), command]  # every invocation
    picks = np.random.default_rng(args.seed).permutation(len(train.stems))[:args.bn_images]
    calibration = scale_images(train.images_u8[np.sort(picks)], PIXEL_SCALE, PIXEL_OFFSET)
    validator = SegmentationValidator(val_images, val.full_masks, class_names, run_dir,
                                      args.patience, args.batch_size, state,
                                      calibration if args.bn_images > 0 else None)
    callbacks = [
        keras.callbacks.LearningRateScheduler(cosine_schedule(args.lr, args.epochs)),
        validator,
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=bool(state)),
    ]
    started = time.monotonic()
    if initial_epoch < args.epochs:
        model.fit(batches, epochs=args.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=args.verbose)
    seconds = time.monotonic() - started + float(state.get("train_seconds", 0.0))

    info = ModelInfo(
        task="segment", arch=_arch_name(args), name=args.name or run_dir.name,
        image_size=(int(size[0]), int(size[1])), channels=channels, layout="NHWC",
        pixel_scale=PIXEL_SCALE, pixel_offset=PIXEL_OFFSET, class_names=class_names,
        palette=default_palette(num_classes, encoding), precision="fp32",
        card={
            "dataset": data_dir.resolve().name,
            "data": str(data_dir.resolve()),
            "mask_encoding": encoding,
            "ignore_index": IGNORE_INDEX,
            "seed": args.seed,
            "train_count": len(train_pairs),
            "held_out": [p.stem for p in val_pairs],
            "val_metrics": validator.best_metrics,
            "best_epoch": validator.best_epoch,
            "epochs_run": validator.epochs_run,
            "params": int(model.count_params()),
            "depth": args.depth if args.arch == "unet" else None,
            "base_filters": args.base_filters,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "train_seconds": round(seconds, 1),
            "framework": f"keras {keras.__version__}",
            "command": command,
            "commands": state["commands"],
        },
    )
    write_json(run_dir / "model_info.json", info.to_dict())
    state_now = read_json(run_dir / STATE) if (run_dir / STATE).is_file() else {}
    state_now["train_seconds"] = round(seconds, 1)
    write_json(run_dir / STATE, state_now)
    metrics = validator.best_metrics
    print(f"done: best val mIoU {metrics.get('miou')} at epoch {validator.best_epoch}; "
          f"{run_dir / 'model.keras'}", flush=True)
    return info.to_dict()
