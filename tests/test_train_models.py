"""train.models: U-Net skips, FCN bilinear upsampling, DCGAN shapes and a few GAN steps."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras

from segen_edge.errors import BadInputError
from train.models import (
    GAN,
    CategoricalCode,
    build_discriminator,
    build_fcn,
    build_generator,
    build_unet,
)
from train.models.fcn import bilinear_kernel

pytestmark = pytest.mark.slow  # builds and trains Keras models


def test_unet_shapes_and_real_skip_concatenations() -> None:
    model = build_unet((32, 32), 3, channels=1, depth=2, base_filters=8)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 32, 32, 3)
    concats = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert len(concats) == 2
    for level, layer in zip((1, 0), concats, strict=True):
        skip = model.get_layer(f"enc{level}_relu2").output
        # One input of each concatenation is the encoder's feature map of that level.
        assert any(t is skip for t in layer.input)
        assert layer.output.shape[-1] == 2 * 8 * 2**level
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_unet_size_check_says_how_to_pad() -> None:
    with pytest.raises(BadInputError, match="--image-size 48 48"):
        build_unet((40, 33), 2, depth=4)


def test_bilinear_kernel_upsamples_a_constant_to_a_constant() -> None:
    kernel = bilinear_kernel(4, 2)
    assert kernel.shape == (4, 4, 2, 2)
    np.testing.assert_allclose(kernel[:, :, 0, 1], 0)
    expected_1d = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel[:, :, 0, 0], np.outer(expected_1d, expected_1d))
    layer = keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same", use_bias=False)
    layer.build((None, 4, 4, 2))
    layer.set_weights([kernel])
    out = keras.ops.convert_to_numpy(layer(np.ones((1, 4, 4, 2), np.float32)))
    np.testing.assert_allclose(out[0, 1:-1, 1:-1], 1.0, atol=1e-6)  # interior: exact


@pytest.mark.parametrize(
    ("variant", "ups"),
    [("8s", {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}), ("32s", {"upscore32": 64})],
)
def test_fcn_transposed_convs_start_bilinear(variant: str, ups: dict[str, int]) -> None:
    model = build_fcn((64, 64), 3, channels=3, base_filters=4, variant=variant)
    assert model.output_shape == (None, 64, 64, 3)
    for name, size in ups.items():
        kernel = model.get_layer(name).get_weights()[0]
        np.testing.assert_allclose(kernel, bilinear_kernel(size, 3))
    if variant == "8s":
        assert model.get_layer("fuse_pool4") and model.get_layer("fuse_pool3")
        np.testing.assert_allclose(model.get_layer("score_pool3").get_weights()[0], 0)
    with pytest.raises(BadInputError, match="multiple of 32"):
        build_fcn((48, 48), 3, variant=variant)


@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3)])
def test_dcgan_shapes(size: int, channels: int) -> None:
    generator = build_generator(16, size, channels, filters=8)
    discriminator = build_discriminator(size, channels, filters=8)
    latents = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    images = keras.ops.convert_to_numpy(generator(latents))
    assert images.shape == (2, size, size, channels)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator.output_shape == (None, 1)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in discriminator.layers)
    with pytest.raises(BadInputError, match="32 or 64"):
        build_generator(16, 48, 1)


def test_discriminator_norm_follows_the_paper() -> None:
    """BatchNorm after every strided conv but the first (Radford et al.); none when asked."""

    def norms(model: keras.Model) -> list[str]:
        return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]

    assert norms(build_discriminator(32, 1, filters=8)) == ["down1_bn", "down2_bn"]
    assert norms(build_discriminator(64, 3, filters=8)) == ["down1_bn", "down2_bn", "down3_bn"]
    plain = build_discriminator(32, 1, filters=8, batchnorm=False, dropout=0.2)
    assert norms(plain) == [] and plain.get_layer("dropout").rate == 0.2
    assert not any(
        isinstance(layer, keras.layers.Dropout) for layer in build_discriminator(32, 1, filters=8).layers
    )


def test_gan_trains_a_few_steps_and_is_seeded() -> None:
    def run() -> tuple[dict[str, float], np.ndarray]:
        keras.utils.set_random_seed(3)
        gan = GAN(build_generator(8, 32, 1, filters=8), build_discriminator(32, 1, filters=8), seed=3)
        gan.compile()
        real = np.random.default_rng(1).uniform(-1, 1, (16, 32, 32, 1)).astype(np.float32)
        history = gan.fit(real, batch_size=8, epochs=1, verbose=0, shuffle=False)
        out = keras.ops.convert_to_numpy(gan.generator(np.ones((1, 8), np.float32)))
        return {k: v[-1] for k, v in history.history.items()}, out

    logs, first = run()
    assert {"d_loss", "g_loss"} <= set(logs) and all(np.isfinite(v) for v in logs.values())
    _, second = run()
    np.testing.assert_allclose(first, second, atol=1e-5)


def test_categorical_code_is_the_one_hot_of_the_first_latents_argmax(tmp_path) -> None:
    latents = np.random.default_rng(0).standard_normal((20000, 7)).astype(np.float32)
    coded = keras.ops.convert_to_numpy(CategoricalCode(4)(latents))
    np.testing.assert_array_equal(coded[:, 4:], latents[:, 4:])
    np.testing.assert_array_equal(coded[:, :4], np.eye(4)[latents[:, :4].argmax(axis=1)])
    shares = coded[:, :4].mean(axis=0)  # N(0, I) latents pick every code equally often
    np.testing.assert_allclose(shares, 0.25, atol=0.015)

    generator = build_generator(7, 32, 1, filters=8, codes=4)
    generator.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(latents[:4])),
        keras.ops.convert_to_numpy(generator(latents[:4])),
        atol=1e-6,
    )
    with pytest.raises(BadInputError, match="code categories"):
        build_generator(4, 32, 1, codes=4)


def test_code_loss_targets_the_latents_code() -> None:
    gan = GAN(build_generator(6, 32, 1, filters=8, codes=3), build_discriminator(32, 1, filters=8, codes=3))
    gan.compile()
    latents = np.array([[2.0, 0, 0, 1, 1, 1], [0, 0, 3.0, 1, 1, 1]], np.float32)
    right = np.array([[9.0, 0, 0], [0, 0, 9.0]], np.float32)
    loss, told = gan._code_loss(latents, right)
    assert float(loss) < 1e-3 and np.asarray(told).tolist() == [1.0, 1.0]
    loss_wrong, told = gan._code_loss(latents, right[::-1])
    assert float(loss_wrong) > 5 and np.asarray(told).tolist() == [0.0, 0.0]


def test_gan_with_a_code_trains_and_reports_how_well_the_code_is_told_back() -> None:
    keras.utils.set_random_seed(2)
    discriminator = build_discriminator(32, 1, filters=8, codes=4)
    assert [tuple(o.shape) for o in discriminator.outputs] == [(None, 1), (None, 4)]
    gan = GAN(build_generator(8, 32, 1, filters=8, codes=4), discriminator, seed=2)
    gan.compile()
    real = np.random.default_rng(1).uniform(-1, 1, (16, 32, 32, 1)).astype(np.float32)
    logs = gan.fit(real, batch_size=8, epochs=1, verbose=0).history
    assert 0.0 <= logs["code_acc"][-1] <= 1.0 and np.isfinite(logs["d_loss"][-1])
    with pytest.raises(BadInputError, match="code head"):
        GAN(build_generator(8, 32, 1, filters=8, codes=4), build_discriminator(32, 1, filters=8))
    with pytest.raises(BadInputError, match="one output"):
        GAN(build_generator(8, 32, 1, filters=8), discriminator)


def test_unet_fits_a_few_steps_with_ignore_index() -> None:
    keras.utils.set_random_seed(0)
    model = build_unet((32, 32), 2, channels=1, depth=2, base_filters=8)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    x = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 1)).astype(np.float32)
    y = (x[..., 0] > 0.5).astype(np.int32)
    y[:, :4] = 255
    losses = model.fit(x, y, batch_size=4, epochs=4, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
