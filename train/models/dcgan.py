"""DCGAN (Radford, Metz and Chintala, 2015) for 32x32 or 64x64 images, grey or RGB.

Generator: Dense -> 4x4 feature map -> strided Conv2DTranspose + BatchNorm + ReLU, doubling
the size each time -> tanh, so outputs lie in [-1, 1] (pixel_scale 1/127.5, offset -1).
Discriminator: strided convs + BatchNorm (not on the first) + LeakyReLU(0.2), no pooling,
one logit.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers

from segen_edge.errors import BadInputError

SIZES = (32, 64)
PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0


def _upsamplings(image_size: int) -> int:
    if image_size not in SIZES:
        raise BadInputError(
            f"dcgan: image size {image_size}; expected 32 or 64 (square), e.g. --image-size 32 32"
        )
    return {32: 3, 64: 4}[image_size]


def build_generator(
    latent_size: int = 100, image_size: int = 32, channels: int = 1, filters: int = 64
) -> keras.Model:
    """latents (N, latent_size) -> images (N, S, S, channels) in [-1, 1].

    Widths halve from filters * 2**(n-1) at 4x4 down to `filters` before the output layer.
    """
    n = _upsamplings(image_size)
    width = filters * 2 ** (n - 1)
    latents = keras.Input((latent_size,), name="latents")
    x = layers.Dense(4 * 4 * width, use_bias=False, name="project")(latents)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    x = layers.Reshape((4, 4, width), name="to_4x4")(x)
    for i in range(n - 1):
        width //= 2
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False,
                                   name=f"up{i}")(x)
        x = layers.BatchNormalization(name=f"up{i}_bn")(x)
        x = layers.ReLU(name=f"up{i}_relu")(x)
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name="to_image")(x)
    images = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(latents, images, name="generator")


def build_discriminator(image_size: int = 32, channels: int = 1, filters: int = 64,
                        batchnorm: bool = True, dropout: float = 0.0) -> keras.Model:
    """images (N, S, S, channels) in [-1, 1] -> real/fake logit (N, 1).

    As in the paper, every strided conv but the first is followed by BatchNorm (`batchnorm`);
    `dropout` > 0 adds dropout before the logit (not in the paper; it weakens the critic).
    """
    n = _upsamplings(image_size)
    images = keras.Input((image_size, image_size, channels), name="image")
    x = images
    for i in range(n):
        norm = batchnorm and i > 0  # BatchNorm's shift replaces the conv's bias
        x = layers.Conv2D(filters * 2**i, 4, strides=2, padding="same", use_bias=not norm,
                          name=f"down{i}")(x)
        if norm:
            x = layers.BatchNormalization(name=f"down{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"down{i}_lrelu")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logit = layers.Dense(1, name="logit", dtype="float32")(x)
    return keras.Model(images, logit, name="discriminator")


class GAN(keras.Model):
    """Trains a generator against a discriminator with the non-saturating GAN loss."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        seed: int = 0,
        ema_decay: float = 0.999,
        ema_generator: keras.Model | None = None,
        **kwargs: Any,
    ) -> None:
        """`ema_decay` > 0 keeps `ema_generator`, an exponential moving average of the
        generator's weights (Yazici et al., 2019), which gives cleaner samples than the
        generator itself; pass a saved one to resume it."""
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.ema_decay = float(ema_decay)
        if self.ema_decay > 0 and ema_generator is None:
            ema_generator = keras.models.clone_model(generator)
            ema_generator.set_weights(generator.get_weights())
        self.ema_generator = ema_generator if self.ema_decay > 0 else None
        self.latent_size = int(generator.input_shape[-1])
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.real_accuracy = keras.metrics.Mean(name="d_real_acc")
        self.fake_accuracy = keras.metrics.Mean(name="d_fake_acc")

    def compile(  # type: ignore[override]
        self,
        d_optimizer: keras.optimizers.Optimizer | None = None,
        g_optimizer: keras.optimizers.Optimizer | None = None,
        label_smoothing: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
        self.label_smoothing = label_smoothing  # one-sided: real targets 1 - smoothing

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.d_loss_tracker, self.g_loss_tracker, self.real_accuracy,
                self.fake_accuracy]

    def call(self, latents: Any, training: bool = False) -> Any:
        return self.generator(latents, training=training)

    def train_step(self, real_images: Any) -> dict[str, Any]:
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        batch = tf.shape(real_images)[0]
        latents = keras.random.normal((batch, self.latent_size), seed=self.seed_generator)
        fake_images = self.generator(latents, training=True)
        real_targets = tf.fill((batch, 1), 1.0 - self.label_smoothing)
        fake_targets = tf.zeros((batch, 1))
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real_images, training=True)
            fake_logits = self.discriminator(fake_images, training=True)
            d_loss = self.loss_fn(real_targets, real_logits) + self.loss_fn(
                fake_targets, fake_logits
            )
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights, strict=True))

        latents = keras.random.normal((batch, self.latent_size), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake_logits_g = self.discriminator(self.generator(latents, training=True),
                                               training=True)
            g_loss = self.loss_fn(tf.ones((batch, 1)), fake_logits_g)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
        if self.ema_generator is not None:
            for average, weight in zip(self.ema_generator.trainable_weights,
                                       self.generator.trainable_weights, strict=True):
                average.assign(self.ema_decay * average + (1.0 - self.ema_decay) * weight)

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.real_accuracy.update_state(tf.cast(real_logits > 0, "float32"))
        self.fake_accuracy.update_state(tf.cast(fake_logits < 0, "float32"))
        return {m.name: m.result() for m in self.metrics}


def recalibrate_batchnorm(generator: keras.Model, latents: Any) -> None:
    """Set every BatchNorm's moving mean and variance to the statistics of one large batch
    (an averaged generator's weights do not match the moving statistics it inherited)."""
    norms = [layer for layer in generator.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    try:
        for layer in norms:
            layer.momentum = 0.0
        generator(latents, training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum
