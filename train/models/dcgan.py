"""DCGAN (Radford, Metz and Chintala, 2015) for 32x32 or 64x64 images, grey or RGB.

Generator: Dense -> 4x4 feature map -> strided Conv2DTranspose + BatchNorm + ReLU, doubling
the size each time -> tanh, so outputs lie in [-1, 1] (pixel_scale 1/127.5, offset -1).
Discriminator: strided convs + BatchNorm (not on the first) + LeakyReLU(0.2), no pooling,
one logit.

Optionally InfoGAN's categorical code (Chen et al., 2016): the generator's first `codes`
latent entries become a one-hot code (`CategoricalCode`) and the discriminator gets a second
head that must tell the code back from the image; both nets are trained to make it
recoverable. No labels are used. On MNIST the code comes to pick the digit, and samples stop
drifting between digits (see train/README.md).
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


@keras.saving.register_keras_serializable(package="segen_edge")
class CategoricalCode(layers.Layer):
    """Replaces the first `categories` latent entries by the one-hot of their argmax.

    For standard normal latents the argmax is uniform over the categories, so the generator
    still takes plain N(0, I) latents (runtime and metadata unchanged) while its first layer
    sees a discrete code beside the continuous rest.
    """

    def __init__(self, categories: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories = int(categories)

    def call(self, latents: Any) -> Any:
        head = latents[:, : self.categories]
        top = keras.ops.max(head, axis=-1, keepdims=True)
        # sign(head - top) is 0 at the max and -1 elsewhere: float ops only, so the fp16
        # and int8 exports need no Cast or boolean tensor
        one_hot = keras.ops.sign(head - top) + 1.0
        return keras.ops.concatenate([one_hot, latents[:, self.categories :]], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "categories": self.categories}


def code_count(generator: keras.Model) -> int:
    """Categories of the generator's InfoGAN code (0: a plain DCGAN generator)."""
    return next((layer.categories for layer in generator.layers if isinstance(layer, CategoricalCode)), 0)


def build_generator(
    latent_size: int = 100,
    image_size: int = 32,
    channels: int = 1,
    filters: int = 64,
    codes: int = 0,
) -> keras.Model:
    """latents (N, latent_size) -> images (N, S, S, channels) in [-1, 1].

    Widths halve from filters * 2**(n-1) at 4x4 down to `filters` before the output layer.
    `codes` > 0 turns the first `codes` latent entries into a one-hot InfoGAN code.
    """
    n = _upsamplings(image_size)
    if not 0 <= codes < latent_size:
        raise BadInputError(
            f"dcgan: {codes} code categories with latent size {latent_size}; "
            "expected 0 (none) up to latent size - 1, e.g. --codes 10"
        )
    width = filters * 2 ** (n - 1)
    latents = keras.Input((latent_size,), name="latents")
    x = CategoricalCode(codes, name="categorical_code")(latents) if codes else latents
    x = layers.Dense(4 * 4 * width, use_bias=False, name="project")(x)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    x = layers.Reshape((4, 4, width), name="to_4x4")(x)
    for i in range(n - 1):
        width //= 2
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"up{i}")(x)
        x = layers.BatchNormalization(name=f"up{i}_bn")(x)
        x = layers.ReLU(name=f"up{i}_relu")(x)
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name="to_image")(x)
    images = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(latents, images, name="generator")


def build_discriminator(
    image_size: int = 32,
    channels: int = 1,
    filters: int = 64,
    batchnorm: bool = True,
    dropout: float = 0.0,
    codes: int = 0,
) -> keras.Model:
    """images (N, S, S, channels) in [-1, 1] -> real/fake logit (N, 1), and with `codes` > 0
    also the InfoGAN code's logits (N, codes) from a small head on the same features.

    As in the paper, every strided conv but the first is followed by BatchNorm (`batchnorm`);
    `dropout` > 0 adds dropout before the logit (not in the paper; it weakens the critic).
    """
    n = _upsamplings(image_size)
    images = keras.Input((image_size, image_size, channels), name="image")
    x = images
    for i in range(n):
        norm = batchnorm and i > 0  # BatchNorm's shift replaces the conv's bias
        x = layers.Conv2D(filters * 2**i, 4, strides=2, padding="same", use_bias=not norm, name=f"down{i}")(x)
        if norm:
            x = layers.BatchNormalization(name=f"down{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"down{i}_lrelu")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logit = layers.Dense(1, name="logit", dtype="float32")(x)
    if not codes:
        return keras.Model(images, logit, name="discriminator")
    q = layers.Dense(128, name="code_hidden")(x)
    q = layers.LeakyReLU(0.2, name="code_lrelu")(q)
    code_logits = layers.Dense(codes, name="code_logits", dtype="float32")(q)
    return keras.Model(images, [logit, code_logits], name="discriminator")


class GAN(keras.Model):
    """Trains a generator against a discriminator with the non-saturating GAN loss, plus
    InfoGAN's code loss when the generator has a categorical code."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        seed: int = 0,
        ema_decay: float = 0.999,
        ema_generator: keras.Model | None = None,
        info_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """`ema_decay` > 0 keeps `ema_generator`, an exponential moving average of the
        generator's weights (Yazici et al., 2019), which gives cleaner samples than the
        generator itself; pass a saved one to resume it. `info_weight` scales the code loss
        (InfoGAN's lambda; 1 for categorical codes in the paper)."""
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.codes = code_count(generator)
        heads = len(discriminator.outputs)
        if heads != (2 if self.codes else 1):
            raise BadInputError(
                f"dcgan: a generator with {self.codes} code categories needs a discriminator "
                f"with {'a code head' if self.codes else 'one output'}, this one has {heads} "
                "outputs; build both with the same codes"
            )
        self.info_weight = float(info_weight)
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
        self.code_accuracy = keras.metrics.Mean(name="code_acc")

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
        self.code_loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.label_smoothing = label_smoothing  # one-sided: real targets 1 - smoothing

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        trackers = [self.d_loss_tracker, self.g_loss_tracker, self.real_accuracy, self.fake_accuracy]
        return trackers + ([self.code_accuracy] if self.codes else [])

    def call(self, latents: Any, training: bool = False) -> Any:
        return self.generator(latents, training=training)

    def _discriminate(self, images: Any) -> tuple[Any, Any]:
        """(real/fake logits, code logits or None)."""
        outputs = self.discriminator(images, training=True)
        return (outputs[0], outputs[1]) if self.codes else (outputs, None)

    def _code_loss(self, latents: Any, code_logits: Any) -> tuple[Any, Any]:
        """(InfoGAN's code loss, the share of codes told back) for these latents' codes."""
        if not self.codes:
            return 0.0, 0.0
        codes = tf.argmax(latents[:, : self.codes], axis=-1)
        told = tf.cast(tf.equal(tf.argmax(code_logits, axis=-1), codes), "float32")
        return self.code_loss_fn(codes, code_logits), told

    def train_step(self, real_images: Any) -> dict[str, Any]:
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        batch = tf.shape(real_images)[0]
        latents = keras.random.normal((batch, self.latent_size), seed=self.seed_generator)
        fake_images = self.generator(latents, training=True)
        real_targets = tf.fill((batch, 1), 1.0 - self.label_smoothing)
        fake_targets = tf.zeros((batch, 1))
        with tf.GradientTape() as tape:
            real_logits, _ = self._discriminate(real_images)
            fake_logits, code_logits = self._discriminate(fake_images)
            code_loss, _ = self._code_loss(latents, code_logits)
            d_loss = self.loss_fn(real_targets, real_logits) + self.loss_fn(fake_targets, fake_logits)
            total = d_loss + self.info_weight * code_loss
        grads = tape.gradient(total, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights, strict=True))

        latents = keras.random.normal((batch, self.latent_size), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake_logits_g, code_logits = self._discriminate(self.generator(latents, training=True))
            code_loss, told = self._code_loss(latents, code_logits)
            g_loss = self.loss_fn(tf.ones((batch, 1)), fake_logits_g)
            total = g_loss + self.info_weight * code_loss
        grads = tape.gradient(total, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
        if self.ema_generator is not None:
            for average, weight in zip(
                self.ema_generator.trainable_weights, self.generator.trainable_weights, strict=True
            ):
                average.assign(self.ema_decay * average + (1.0 - self.ema_decay) * weight)

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.real_accuracy.update_state(tf.cast(real_logits > 0, "float32"))
        self.fake_accuracy.update_state(tf.cast(fake_logits < 0, "float32"))
        if self.codes:
            self.code_accuracy.update_state(told)
        return {m.name: m.result() for m in self.metrics}


def recalibrate_batchnorm(generator: keras.Model, latents: Any) -> None:
    """Set every BatchNorm's moving mean and variance to the statistics of one large batch
    (an averaged generator's weights do not match the moving statistics it inherited)."""
    norms = [layer for layer in generator.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    try:
        for layer in norms:
            layer.momentum = 0.0
        generator(latents, training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum
