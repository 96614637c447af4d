"""Train a DCGAN on MNIST-style IDX files or a folder of images into a run directory."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.metadata import ModelInfo

from .callbacks import linear_decay
from .data import GanData, load_gan_data, save_grid, scale_images
from .models.dcgan import (
    GAN,
    PIXEL_OFFSET,
    PIXEL_SCALE,
    build_discriminator,
    build_generator,
    recalibrate_batchnorm,
)
from .quality import QualityScorer
from .rundir import STATE, read_json, save_model, write_json


def generate_u8(generator: keras.Model, latents: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Latents -> uint8 images (N, H, W, C), inverting the [-1, 1] scaling."""
    outputs = [
        keras.ops.convert_to_numpy(generator(latents[i : i + batch_size], training=False))
        for i in range(0, len(latents), batch_size)
    ]
    values = np.concatenate(outputs)
    return np.clip(np.rint((values - PIXEL_OFFSET) / PIXEL_SCALE), 0, 255).astype(np.uint8)


class GanLearningRate(keras.callbacks.Callback):
    """Sets both optimizers' learning rate from `schedule(epoch)` at each epoch's start."""

    def __init__(self, schedule: Any) -> None:
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        gan: GAN = self.model  # type: ignore[assignment]
        lr = self.schedule(epoch)
        gan.d_optimizer.learning_rate = lr
        gan.g_optimizer.learning_rate = lr

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["lr"] = self.schedule(epoch)


class GanMonitor(keras.callbacks.Callback):
    """Per epoch: a sample grid (fixed latents), the quality score into the logs, the best
    generator by Frechet distance to generator.keras / discriminator.keras, the last ones
    and state.json for --resume."""

    def __init__(
        self,
        run_dir: Path,
        scorer: QualityScorer | None,
        latent_size: int,
        samples: int,
        seed: int,
        state: dict[str, Any],
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.scorer = scorer
        rng = np.random.default_rng([seed, 1])
        self.grid_latents = rng.standard_normal((64, latent_size)).astype(np.float32)
        self.score_latents = rng.standard_normal((samples, latent_size)).astype(np.float32)
        self.calibration_latents = rng.standard_normal((4096, latent_size)).astype(np.float32)
        self.classifier = scorer.info.get("created", "") if scorer is not None else ""
        if state.get("classifier", "") != self.classifier:
            state = {**state, "best": None, "best_epoch": -1, "best_quality": {}}  # new scale
        self.best = float(state.get("best", math.inf) or math.inf)
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_quality: dict[str, Any] = dict(state.get("best_quality", {}))
        self.epochs_run = int(state.get("epochs_run", 0))
        self.commands: list[str] = list(state.get("commands", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        gan: GAN = self.model  # type: ignore[assignment]
        sampler = gan.generator
        if gan.ema_generator is not None:
            sampler = gan.ema_generator
            recalibrate_batchnorm(sampler, self.calibration_latents)
        save_grid(
            self.run_dir / "samples" / f"epoch-{epoch + 1:03d}.png", generate_u8(sampler, self.grid_latents)
        )
        quality: dict[str, Any] = {}
        value = -float(epoch)  # without a scorer the latest generator counts as best
        if self.scorer is not None:
            quality = self.scorer.score(generate_u8(sampler, self.score_latents))
            logs["confident_fraction"] = quality["confident_fraction"]
            logs["min_class_coverage"] = quality["min_class_coverage"]
            logs["frechet_distance"] = quality["frechet_distance"]
            value = quality["frechet_distance"]
        self.epochs_run = epoch + 1
        improved = value < self.best
        if improved:
            self.best, self.best_epoch, self.best_quality = value, epoch + 1, quality
            save_model(sampler, self.run_dir / "generator.keras")
            save_model(gan.discriminator, self.run_dir / "discriminator.keras")
        save_model(gan.generator, self.run_dir / "last-generator.keras")
        if gan.ema_generator is not None:
            save_model(gan.ema_generator, self.run_dir / "last-ema-generator.keras")
        save_model(gan.discriminator, self.run_dir / "last-discriminator.keras")
        seconds = self.train_seconds + time.monotonic() - self._started
        write_json(
            self.run_dir / STATE,
            {
                "epochs_run": self.epochs_run,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "best_quality": self.best_quality,
                "train_seconds": round(seconds, 1),
                "commands": self.commands,
                "classifier": self.classifier,
            },
        )
        if quality:
            print(
                f"epoch {epoch + 1}: confident {quality['confident_fraction']:.3f}, "
                f"min class coverage {quality['min_class_coverage']:.3f}, Frechet "
                f"{quality['frechet_distance']:.3f} (floor "
                f"{quality['frechet_floor_real_vs_real']:.3f})"
                f"{' (best)' if improved else ''}",
                flush=True,
            )


def train_gan(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train per `args` (see train.cli); returns the run's model_info dict."""
    run_dir = Path(args.out)
    height, width = args.image_size
    if height != width:
        raise BadInputError(f"dcgan: image size {height}x{width}; expected a square 32 32 or 64 64")
    if not 0 <= args.lr_decay_epochs <= args.epochs:
        raise BadInputError(
            f"dcgan: --lr-decay-epochs {args.lr_decay_epochs} with --epochs "
            f"{args.epochs}; expected 0 (no decay) up to the number of epochs"
        )
    state: dict[str, Any] = {}
    if args.resume:
        if not (run_dir / STATE).is_file() or not (run_dir / "last-generator.keras").is_file():
            raise BadInputError(
                f"{run_dir}: nothing to resume (no {STATE} or "
                "last-generator.keras); start the run without --resume"
            )
        state = read_json(run_dir / STATE)
    elif (run_dir / "generator.keras").exists() and not args.overwrite:
        raise BadInputError(
            f"{run_dir}: already holds a trained generator; pass --resume to "
            "continue it, --overwrite to start again, or another --out"
        )
    keras.utils.set_random_seed(args.seed)
    data: GanData = load_gan_data(args.data, (height, width), args.channels, args.limit)
    print(
        f"data: {len(data.images_u8)} real {height}x{width}x{args.channels} images from {args.data}",
        flush=True,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    scorer = None
    classifier_cache = Path(args.classifier_cache or run_dir).resolve()
    if data.labels is not None:
        own_cache = classifier_cache == run_dir.resolve()  # --overwrite starts it afresh too
        scorer = QualityScorer.load_or_train(
            classifier_cache, data, args.seed, args.samples, replace=own_cache and args.overwrite
        )
    else:
        print("quality: no class labels, so no quality score (sample grids only)", flush=True)

    if state:
        generator = keras.models.load_model(run_dir / "last-generator.keras")
        ema_path = run_dir / "last-ema-generator.keras"
        ema_generator = keras.models.load_model(ema_path) if ema_path.is_file() else None
        discriminator = keras.models.load_model(run_dir / "last-discriminator.keras")
        initial_epoch = int(state["epochs_run"])
        print(f"resuming {run_dir} after epoch {initial_epoch} (optimizer state restarts)", flush=True)
    else:
        generator = build_generator(args.latent_size, height, args.channels, args.filters, codes=args.codes)
        discriminator = build_discriminator(
            height,
            args.channels,
            args.d_filters,
            batchnorm=args.d_norm == "batch",
            dropout=args.d_dropout,
            codes=args.codes,
        )
        ema_generator = None
        initial_epoch = 0
    gan = GAN(
        generator,
        discriminator,
        seed=args.seed,
        ema_decay=args.ema,
        ema_generator=ema_generator,
        info_weight=args.info_weight,
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(args.lr, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(args.lr, beta_1=0.5),
        jit_compile=args.jit,
    )
    monitor = GanMonitor(run_dir, scorer, args.latent_size, args.samples, args.seed, state)
    monitor.commands.append(command)
    real = scale_images(data.images_u8, PIXEL_SCALE, PIXEL_OFFSET)
    callbacks = [
        GanLearningRate(linear_decay(args.lr, args.epochs, args.lr_decay_epochs)),
        monitor,
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=bool(state)),
    ]
    if initial_epoch < args.epochs:
        gan.fit(
            real,
            batch_size=args.batch_size,
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            shuffle=True,
            callbacks=callbacks,
            verbose=args.verbose,
        )
    seconds = read_json(run_dir / STATE).get("train_seconds") if (run_dir / STATE).is_file() else None
    info = ModelInfo(
        task="generate",
        arch="dcgan",
        name=args.name or run_dir.name,
        image_size=(height, width),
        channels=args.channels,
        layout="NHWC",
        pixel_scale=PIXEL_SCALE,
        pixel_offset=PIXEL_OFFSET,
        latent_size=args.latent_size,
        precision="fp32",
        card={
            "dataset": data.name,
            "data": str(Path(args.data).resolve()),
            "latent_distribution": "standard normal",
            "seed": args.seed,
            "train_count": len(data.images_u8),
            "quality": monitor.best_quality,
            "classifier_cache": str(classifier_cache) if scorer is not None else None,
            "best_epoch": monitor.best_epoch,
            "epochs_run": monitor.epochs_run,
            "params": int(generator.count_params()),
            "discriminator_params": int(discriminator.count_params()),
            "discriminator_norm": args.d_norm,
            "discriminator_dropout": args.d_dropout,
            "ema_decay": args.ema,
            "categorical_code": gan.codes,  # InfoGAN code: argmax of the first latents
            "info_weight": args.info_weight if gan.codes else None,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "lr_decay_epochs": args.lr_decay_epochs,
            "jit_compile": args.jit,
            "train_seconds": seconds,
            "class_names": list(data.class_names),
            "framework": f"keras {keras.__version__}",
            "command": command,
            "commands": monitor.commands,  # every invocation, when the run was resumed
        },
    )
    write_json(run_dir / "model_info.json", info.to_dict())
    print(
        f"done: best Frechet {monitor.best_quality.get('frechet_distance')} at epoch "
        f"{monitor.best_epoch}; {run_dir / 'generator.keras'}",
        flush=True,
    )
    return info.to_dict()
