"""Train a segmenter (U-Net or FCN) on a folder of image/mask pairs into a run directory."""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.images import load_image
from segen_edge.masks import Pair, find_pairs
from segen_edge.metadata import ModelInfo, Preprocessing
from segen_edge.metrics import IGNORE_INDEX

from .callbacks import (
    Predictions,
    SegmentationValidator,
    cosine_schedule,
    evaluate_segmenter,
    resized_predictions,
    tiled_predictions,
)
from .data import (
    Augment,
    SegmentationArrays,
    SegmentationBatches,
    find_valid_masks,
    load_segmentation,
    read_stem_list,
    scale_images,
    split_pairs,
    take_stems,
)
from .labels import (
    check_ignore_indices,
    count_classes,
    default_class_names,
    default_palette,
    detect_encoding,
    parse_class_weights,
)
from .losses import SegmentationLoss, check_loss
from .models import build_encoder_unet, build_fcn, build_unet
from .models.encoders import ENCODERS, check_encoder, resolve_weights
from .models.unet import check_block
from .rundir import STATE, read_json, write_json

PIXEL_SCALE = 1.0 / 255.0
PIXEL_OFFSET = 0.0
TILE_OVERLAP = 0.25  # recorded for the runtime's tile mode (its default)


def _weights_record(args: argparse.Namespace, weights_file: Path | None) -> str | None:
    """The card's encoder_weights: "imagenet (its file's name)" (a cached or packaged file,
    whose path is this machine's), a user's file as a path, or "none"."""
    if _encoder(args) == "none":
        return None
    if weights_file is None:
        return "none"
    if str(args.encoder_weights).lower() == "imagenet":
        return f"imagenet ({weights_file.name})"
    return str(weights_file.resolve())


def _encoder(args: argparse.Namespace) -> str:
    return str(getattr(args, "encoder", "none") or "none").lower()


def stride_of(args: argparse.Namespace) -> int:
    """The network's total downsampling: inputs must be multiples of it."""
    if args.arch == "unet" and _encoder(args) == "none":
        return int(2**args.depth)
    return 32


def build_segmenter(
    args: argparse.Namespace, num_classes: int, channels: int, weights: Path | None = None
) -> keras.Model:
    size = tuple(args.crop or args.image_size)
    any_size = bool(args.crop)
    block = getattr(args, "block", "plain")
    if _encoder(args) != "none":
        return build_encoder_unet(
            size, num_classes, _encoder(args), weights, args.base_filters, args.dropout, block, any_size
        )
    if args.arch == "unet":
        return build_unet(
            size, num_classes, channels, args.depth, args.base_filters, args.dropout, block, any_size
        )
    return build_fcn(
        size, num_classes, channels, args.base_filters, args.variant, args.dropout, block, any_size
    )


def _arch_name(args: argparse.Namespace) -> str:
    base = "unet" if args.arch == "unet" else f"fcn{args.variant}"
    return base if _encoder(args) == "none" else f"{base}-{_encoder(args)}"


def pixel_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ModelInfo fields that say how pixels become model values: the encoder's own
    preprocessing (keras.applications' preprocess_input) or 1/255."""
    if _encoder(args) == "none":
        return {"pixel_scale": PIXEL_SCALE, "pixel_offset": PIXEL_OFFSET}
    spec = ENCODERS[_encoder(args)]
    if spec.mean:
        return {"mean": spec.mean, "std": spec.std}
    return {"pixel_scale": spec.scale, "pixel_offset": spec.offset}


def mode_fields(args: argparse.Namespace) -> dict[str, Any]:
    """How the runtime runs the model: tile mode (windows of the crop size) for a model
    trained on crops at native scale, else resize mode."""
    if args.crop:
        return {
            "mode": "tile",
            "tile_size": (int(args.crop[0]), int(args.crop[1])),
            "overlap": TILE_OVERLAP,
            "stride": stride_of(args),
        }
    return {"mode": "resize", "stride": stride_of(args)}


def draft_info(
    args: argparse.Namespace, channels: int, class_names: tuple[str, ...], encoding: str, name: str
) -> ModelInfo:
    """The run's ModelInfo without its card: what training scales pixels with
    (`.preprocessing`) and validation tiles with is what the metadata will say."""
    size = tuple(args.crop or args.image_size)
    return ModelInfo(
        task="segment",
        arch=_arch_name(args),
        name=name,
        image_size=(int(size[0]), int(size[1])),
        channels=channels,
        layout="NHWC",
        class_names=class_names,
        palette=default_palette(len(class_names), encoding),
        precision="fp32",
        **pixel_fields(args),
        **mode_fields(args),
    )


def _guess_channels(path: Path) -> int:
    image_u8 = load_image(path, channels=3).image_u8
    grey = np.array_equal(image_u8[..., 0], image_u8[..., 1]) and np.array_equal(
        image_u8[..., 0], image_u8[..., 2]
    )
    return 1 if grey else 3


def check_options(args: argparse.Namespace) -> Path | None:
    """Everything about the options that can be refused before any data is read; returns
    the encoder's weights file (None: random initialisation)."""
    check_loss(args.loss)
    check_block(args.block)
    check_init_from(args.init_from)
    if not 0.0 <= args.elastic <= 100.0:
        raise BadInputError(
            f"--elastic {args.elastic}: expected a displacement in pixels in [0, 100], e.g. 10"
        )
    if not 0.0 <= args.ema < 1.0:
        raise BadInputError(f"--ema {args.ema}: expected a momentum in [0, 1), e.g. 0.99 (0: off)")
    if args.crop is not None and any(v < 1 for v in args.crop):
        raise BadInputError(f"--crop {args.crop[0]} {args.crop[1]}: expected two sizes >= 1")
    if _encoder(args) == "none":
        if str(args.encoder_weights).lower() not in ("none", "imagenet"):
            raise BadInputError(f"--encoder-weights needs an --encoder ({', '.join(ENCODERS)})")
        return None
    check_encoder(_encoder(args))
    if args.arch != "unet":
        raise BadInputError(
            f"--encoder {_encoder(args)} builds a U-Net decoder; use 'train unet', not 'train fcn'"
        )
    if args.channels == 1:
        raise BadInputError(
            f"--encoder {_encoder(args)} takes RGB images; drop --channels 1 "
            "(grey images are repeated to 3 channels)"
        )
    return resolve_weights(_encoder(args), str(args.encoder_weights))


def check_init_from(path: str | None) -> None:
    if path and not Path(path).is_file():
        raise BadInputError(
            f"--init-from {path}: no such file; give a trained model of the same architecture "
            "(a run's model.keras or a .weights.h5 file)"
        )


def init_weights(model: keras.Model, path: Path) -> None:
    """Every layer's weights from `path`; a file of another architecture is one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".keras":
                source = keras.models.load_model(path, compile=False)
                model.set_weights(source.get_weights())
            else:
                model.load_weights(str(path))
    except (ValueError, KeyError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"--init-from {path}: not weights of this architecture ({first[:160]}); pass the "
            "--depth, --base-filters, --block and --encoder the model was trained with"
        ) from None


def _ignore(args: argparse.Namespace) -> tuple[int, ...]:
    values = args.ignore_index or [IGNORE_INDEX]
    return tuple(dict.fromkeys(int(v) for v in values))


def split_seed(args: argparse.Namespace) -> int:
    """The random split's seed: --split-seed, else --seed."""
    return args.seed if args.split_seed is None else args.split_seed


def split_data(args: argparse.Namespace, pairs: list[Pair]) -> tuple[list[Pair], list[Pair], list[Pair], str]:
    """(train, val, test, how): the data set's own lists or folder when given, else the
    seeded random split. Test pairs are kept out of training and validation."""
    test: list[Pair] = []
    if args.test_list:
        test, pairs = take_stems(pairs, read_stem_list(args.test_list, pairs, "--test-list"))
    if args.val_dir:
        if args.val_list:
            raise BadInputError("--val-dir and --val-list both name the validation images; give one of them")
        val = find_pairs(args.val_dir)
        return sorted(pairs, key=lambda p: p.stem), val, test, "val-dir"
    if args.val_list:
        all_pairs = [*pairs, *test]
        stems = read_stem_list(args.val_list, all_pairs, "--val-list")
        clash = sorted(set(stems) & {p.stem for p in test})
        if clash:
            raise BadInputError(
                f"--val-list and --test-list both name {clash[0]!r} "
                f"({len(clash)} stems); a stem belongs to one split"
            )
        val, train = take_stems(pairs, stems)
        if not train:
            raise BadInputError(f"--val-list {args.val_list} names every pair; leave some for training")
        return train, val, test, "val-list"
    train, val = split_pairs(pairs, split_seed(args), args.val_fraction, args.val_count)
    return train, val, test, "random"


def _check_crop(crop: tuple[int, int], arrays: SegmentationArrays, pairs: list[Pair]) -> None:
    for image_u8, pair in zip(arrays.images_u8, pairs, strict=True):
        if image_u8.shape[0] < crop[0] or image_u8.shape[1] < crop[1]:
            raise BadInputError(
                f"{pair.image}: image is {image_u8.shape[0]}x{image_u8.shape[1]}, smaller than "
                f"--crop {crop[0]} {crop[1]}; use a crop no larger than the smallest image"
            )


def _class_names(args: argparse.Namespace, encoding: str, num_classes: int) -> tuple[str, ...]:
    if not args.class_names:
        return default_class_names(encoding, num_classes)
    # "a b c" (one argument each) or "a,b,c" as segment takes them
    names = tuple(n.strip() for part in args.class_names for n in part.split(",") if n.strip())
    if len(names) != num_classes:
        ignored = ", ".join(str(v) for v in _ignore(args))
        raise BadInputError(
            f"--class-names gives {len(names)} names but the masks hold {num_classes} classes "
            f"(ids 0..{num_classes - 1}, ignoring {ignored}); give one name per class id, or "
            "--ignore-index for a void label"
        )
    return names


def _predictions(args: argparse.Namespace, arrays: SegmentationArrays, info: ModelInfo) -> Predictions:
    """Resize mode: the images as loaded (already at the model's size); tile mode: whole
    images at native size through the runtime's tiling."""
    if args.crop:
        return tiled_predictions(list(arrays.images_u8), arrays.full_masks, info, args.batch_size)
    images = scale_images(np.asarray(arrays.images_u8), info.preprocessing)
    return resized_predictions(images, arrays.full_masks, args.batch_size)


def _calibration(
    args: argparse.Namespace, train: SegmentationArrays, preprocessing: Preprocessing
) -> np.ndarray | None:
    """Unaugmented training images for precise BatchNorm (centre crops when training on
    crops), or None when --bn-images is 0."""
    if args.bn_images <= 0:
        return None
    picks = np.sort(np.random.default_rng(args.seed).permutation(len(train.stems))[: args.bn_images])
    if args.crop:
        h, w = args.crop
        crops = []
        for i in picks:
            image = train.images_u8[i]
            top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
            crops.append(image[top : top + h, left : left + w])
        return scale_images(np.stack(crops), preprocessing)
    return scale_images(np.asarray(train.images_u8)[picks], preprocessing)


def train_segmenter(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train per `args` (see train.cli); returns the run's model_info dict. Every check of
    the options and the data runs before the first step, so bad input fails in seconds."""
    run_dir = Path(args.out)
    state: dict[str, Any] = {}
    if args.resume:
        if not (run_dir / STATE).is_file() or not (run_dir / "last.keras").is_file():
            raise BadInputError(
                f"{run_dir}: nothing to resume (no {STATE} or last.keras); start the run without --resume"
            )
        state = read_json(run_dir / STATE)
    elif (run_dir / "model.keras").exists() and not args.overwrite:
        raise BadInputError(
            f"{run_dir}: already holds a trained model; pass --resume to "
            "continue it, --overwrite to start again, or another --out"
        )
    weights_file = check_options(args)
    keras.utils.set_random_seed(args.seed)

    data_dir = Path(args.data)
    train_pairs, val_pairs, test_pairs, split = split_data(args, find_pairs(data_dir))
    if state.get("held_out") and state["held_out"] != [p.stem for p in val_pairs]:
        raise BadInputError(
            f"{run_dir}: --resume with another split than the run's; use the "
            "run's --seed, --val-fraction/--val-count/--val-list and --data"
        )
    every = [*train_pairs, *val_pairs, *test_pairs]
    encoding = args.mask_encoding
    if encoding == "auto":
        encoding = detect_encoding([p.mask for p in every if p.mask is not None])
    channels = 3 if _encoder(args) != "none" else (args.channels or _guess_channels(train_pairs[0].image))
    ignore = _ignore(args)
    valid = find_valid_masks(args.valid_masks, [p.stem for p in every]) if args.valid_masks else None
    crop = tuple(args.crop) if args.crop else None
    size = crop or tuple(args.image_size)
    print(
        f"data: {len(train_pairs)} train / {len(val_pairs)} val"
        f"{f' / {len(test_pairs)} test' if test_pairs else ''} pairs from {data_dir} "
        f"({split} split), masks '{encoding}', {channels} channel(s), "
        f"{f'crops {size[0]}x{size[1]} at native scale' if crop else f'{size[0]}x{size[1]}'}",
        flush=True,
    )
    load_size = None if crop else (int(size[0]), int(size[1]))
    train = load_segmentation(train_pairs, load_size, channels, encoding, ignore, valid)
    val = load_segmentation(val_pairs, load_size, channels, encoding, ignore, valid)
    if crop:
        _check_crop((int(crop[0]), int(crop[1])), train, train_pairs)
    num_classes = count_classes([*train.masks, *val.masks], encoding)
    class_names = _class_names(args, encoding, num_classes)
    check_ignore_indices(ignore, num_classes, class_names)
    class_weights = parse_class_weights(args.class_weights, num_classes, train.masks, class_names)
    if class_weights is not None:
        print(
            "class weights: "
            + ", ".join(f"{n} {w:.3g}" for n, w in zip(class_names, class_weights, strict=True)),
            flush=True,
        )
    draft = draft_info(args, channels, class_names, encoding, args.name or run_dir.name)
    preprocessing = draft.preprocessing

    augment = Augment(
        hflip=args.hflip,
        vflip=args.vflip,
        max_zoom=args.max_zoom,
        jitter=args.jitter,
        saturation=args.saturation,
        rot90=args.rot90,
        elastic=args.elastic,
    )
    repeats = args.repeats or max(1, math.ceil(args.min_samples / len(train_pairs)))
    batches = SegmentationBatches(
        train, args.batch_size, preprocessing, augment, args.seed, repeats=repeats, crop=crop
    )
    predictions = _predictions(args, val, draft)

    if state:
        model = keras.models.load_model(run_dir / "last.keras")
        initial_epoch = int(state["epochs_run"])
        batches.set_epoch(initial_epoch)
        print(f"resuming {run_dir} after epoch {initial_epoch}", flush=True)
    else:
        model = build_segmenter(args, num_classes, channels, weights_file)
        if args.jit and _encoder(args) != "none" and ENCODERS[_encoder(args)].depthwise:
            print(
                f"note: --jit with --encoder {_encoder(args)}: XLA runs depthwise convolutions' "
                "gradients slowly on CPUs (a Lite0 step 3.7x slower here); drop --jit to train faster",
                flush=True,
            )
        if args.init_from:
            init_weights(model, Path(args.init_from))
        model.compile(
            optimizer=keras.optimizers.Adam(args.lr, use_ema=args.ema > 0, ema_momentum=args.ema or 0.99),
            loss=SegmentationLoss(
                num_classes,
                args.loss,
                None if class_weights is None else class_weights.tolist(),
                args.focal_gamma,
            ),
            jit_compile=args.jit,
        )
        initial_epoch = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    state.setdefault("held_out", [p.stem for p in val_pairs])
    state["commands"] = [*state.get("commands", []), command]  # every invocation
    validator = SegmentationValidator(
        predictions,
        class_names,
        run_dir,
        args.patience,
        args.batch_size,
        state,
        _calibration(args, train, preprocessing),
    )
    callbacks = [
        keras.callbacks.LearningRateScheduler(cosine_schedule(args.lr, args.epochs)),
        # with --ema the averaged weights are in the model from each epoch's end to the next
        # epoch's start: the validator scores and saves them (and the last epoch keeps them)
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if args.ema > 0 else []),
        validator,
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=bool(state)),
    ]
    started = time.monotonic()
    if initial_epoch < args.epochs:
        model.fit(
            batches,
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=args.verbose,
        )
    seconds = time.monotonic() - started + float(state.get("train_seconds", 0.0))
    test_metrics = _score_test(args, run_dir, test_pairs, encoding, ignore, valid, draft)

    info = draft.replace(
        card={
            "dataset": data_dir.resolve().name,
            "data": str(data_dir.resolve()),
            "mask_encoding": encoding,
            "ignore_index": list(ignore),
            "valid_masks": str(Path(args.valid_masks).resolve()) if args.valid_masks else None,
            "seed": args.seed,
            "split": split,
            "split_seed": split_seed(args) if split == "random" else None,
            "val_list": str(Path(args.val_list).resolve()) if args.val_list else None,
            "val_dir": str(Path(args.val_dir).resolve()) if args.val_dir else None,
            "train_count": len(train_pairs),
            "held_out": [p.stem for p in val_pairs],
            "test": [p.stem for p in test_pairs],
            "val_metrics": validator.best_metrics,
            "test_metrics": test_metrics,
            "best_epoch": validator.best_epoch,
            "epochs_run": validator.epochs_run,
            "params": int(model.count_params()),
            "depth": args.depth if args.arch == "unet" and _encoder(args) == "none" else None,
            "base_filters": args.base_filters,
            "block": args.block,
            "encoder": None if _encoder(args) == "none" else _encoder(args),
            "encoder_weights": _weights_record(args, weights_file),
            "init_from": args.init_from,  # as given: cards stay portable
            "ema": args.ema or None,
            "loss": args.loss,
            "focal_gamma": args.focal_gamma if args.loss == "focal" else None,
            "class_weights_from": args.class_weights.strip().lower()
            if args.class_weights.strip().lower() in ("auto", "none")
            else "given",
            "class_weights": None if class_weights is None else [round(float(w), 6) for w in class_weights],
            "augment": augment.as_dict(),
            "crop": list(crop) if crop else None,
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
    tested = f"; test mIoU {test_metrics.get('miou')}" if test_metrics else ""
    print(
        f"done: best val mIoU {metrics.get('miou')} at epoch {validator.best_epoch}{tested}; "
        f"{run_dir / 'model.keras'}",
        flush=True,
    )
    return info.to_dict()


def _score_test(
    args: argparse.Namespace,
    run_dir: Path,
    pairs: list[Pair],
    encoding: str,
    ignore: tuple[int, ...],
    valid: dict[str, Path] | None,
    info: ModelInfo,
) -> dict[str, Any] | None:
    """The best model's metrics on the --test-list pairs (None without them)."""
    if not pairs or not (run_dir / "model.keras").is_file():
        return None
    load_size = None if args.crop else info.image_size
    arrays = load_segmentation(pairs, load_size, info.channels, encoding, ignore, valid)
    best = keras.models.load_model(run_dir / "model.keras", compile=False)
    return evaluate_segmenter(best, _predictions(args, arrays, info), info.class_names)
