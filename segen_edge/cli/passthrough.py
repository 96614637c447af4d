"""segen-edge train and export: hand the arguments to train/ and export/ (TensorFlow side)."""

from __future__ import annotations

import importlib
import os

import typer

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """Train a model (unet | fcn | dcgan); needs the 'train' extra. See 'segen-edge train --help'."""
    dispatch("train", "training", ctx.args)


def export(ctx: typer.Context) -> None:
    """Export a training run to ONNX fp32/fp16/int8; needs the 'train' extra."""
    dispatch("export", "export", ctx.args)


def dispatch(package: str, what: str, args: list[str]) -> None:
    """Parse first (the module's own parser answers --help before TensorFlow loads), then run."""
    from ..errors import MissingExtraError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter, not errors
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    try:
        module = importlib.import_module(f"{package}.cli")
    except ImportError as exc:
        raise MissingExtraError(f"segen-edge {package} ({what}; missing {exc.name})", "train") from None
    extra = {"prog": f"segen-edge {package}"} if package == "train" else {}  # so --help reads right
    try:
        code = module.main(list(args), **extra)
    except ImportError as exc:
        raise MissingExtraError(f"segen-edge {package} ({what}; missing {exc.name})", "train") from None
    raise typer.Exit(int(code or 0))
