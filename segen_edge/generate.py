"""Generator: seeded latents -> uint8 images, and grids of them.

Latents come from one seeded stream, so image i is the same for a given seed whatever the
batch size or the number of images asked for.

A generator trained with an InfoGAN code (card key `categorical_code`: K) reads the argmax of
its first K latents as a category; `code=c` swaps each latent's largest head entry into place
c, which draws from the latents of category c exactly (the head's entries are exchangeable).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from .checks import whole
from .errors import BadInputError, ModelError
from .model import Model
from .pipeline import ordered_map

MAX_COUNT = 10_000_000  # images per call; more is a typo (and days of work)
MAX_GRID_PIXELS = 120_000_000


def check_seed(seed: int | None) -> int | None:
    """None (a fresh random seed) or a whole number 0 .. 2**63 - 1."""
    return None if seed is None else whole(seed, "--seed", 0, 2**63 - 1)


def check_count(n: int, what: str = "-n") -> int:
    return whole(n, what, 1, MAX_COUNT, "images")


def check_batch_size(batch_size: int, limit: int = 4096) -> int:
    return whole(batch_size, "--batch-size", 1, limit)


def fresh_seed() -> int:
    """A random seed to report, so a run can be repeated."""
    return int(np.random.SeedSequence().entropy % 2**31)  # type: ignore[operator]


class Generator(Model):
    """A generative model: latent vectors in, uint8 images out. Use `segen_edge.load_generator()`.

    >>> gen = segen_edge.load_generator("dcgan-mnist")
    >>> images = gen.generate(16, seed=0)          # (16, 32, 32, 1) uint8
    >>> Image.fromarray(gen.grid(images)).save("grid.png")
    """

    @property
    def codes(self) -> int:
        """Categories of the model's InfoGAN code (0: none)."""
        value = self.info.card.get("categorical_code") or 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    def check_code(self, code: int | None) -> None:
        if code is None:
            return
        if not self.codes:
            raise BadInputError(
                f"--code {code}: {self.name} has no categorical code (it was trained "
                "without 'train dcgan --codes'); leave --code out"
            )
        if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or not 0 <= code < self.codes:
            raise BadInputError(
                f"--code {code}: {self.name}'s code has {self.codes} categories; pass 0 to {self.codes - 1}"
            )

    def generate(
        self,
        n: int,
        *,
        seed: int | None = None,
        code: int | None = None,
        batch_size: int = 16,
        pil: bool = False,
    ) -> np.ndarray | list[Image.Image]:
        """n images as one uint8 (n, H, W, C) array, or a list of PIL images with pil=True.
        The same seed gives the same images, whatever the batch size."""
        n = check_count(n)
        seed = fresh_seed() if check_seed(seed) is None else seed
        assert seed is not None
        images = np.concatenate(list(self.iter_batches(n, seed, check_batch_size(batch_size), code=code)))
        if pil:
            return [Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im) for im in images]
        return images

    def grid(
        self, images: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 1
    ) -> np.ndarray:
        """Tile (N, H, W, C) images into one uint8 image, enlarged `scale` times (nearest)."""
        return make_grid(images, columns, pad, scale)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(N, latent) -> (N, H, W, C) uint8 images."""
        values = self.run(np.ascontiguousarray(latents, dtype=np.float32))
        if values.ndim != 4:
            raise ModelError(
                f"{self.path}: a generator must return an image batch (N, H, W, C) or (N, C, H, W), "
                f"but it returned shape {list(values.shape)}"
            )
        nhwc = self.info.preprocessing.to_nhwc(values)
        if nhwc.shape[3] not in (1, 3, 4) and values.shape[1] in (1, 3, 4):
            nhwc = values.transpose(0, 2, 3, 1)  # an NHWC-described graph that returns NCHW
        if nhwc.shape[3] not in (1, 3, 4):
            raise ModelError(
                f"{self.path}: the generator returned shape {list(values.shape)}, which has no "
                "channel axis of 1, 3 or 4; check --layout"
            )
        if not np.isfinite(nhwc).all():
            nhwc = np.nan_to_num(nhwc, nan=0.0, posinf=0.0, neginf=0.0)
        return dataclasses.replace(self.info.preprocessing, layout="NHWC").to_pixels(nhwc)

    def iter_batches(
        self,
        n: int,
        seed: int,
        batch_size: int = 16,
        stop: threading.Event | None = None,
        lanes: int = 1,
        code: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield n images as (batch, H, W, C) uint8 arrays, one batch at a time, in order;
        `lanes` batches run at once (see pipeline.lanes_for); `code` picks a category."""

        def decode(item: tuple[int, np.ndarray]) -> np.ndarray:
            return self.decode(item[1])

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-run") as runners:
            batches = self.latents(n, seed, batch_size, stop, code)
            yield from ordered_map(decode, batches, runners, lanes + 1, stop)

    def latents(
        self,
        n: int,
        seed: int,
        batch_size: int,
        stop: threading.Event | None = None,
        code: int | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first image, latents) per batch, from one seeded stream, so image i
        is the same whatever the batch size; nothing new once `stop` is set."""
        self.check_code(code)
        rng = np.random.default_rng(seed)
        for start in range(0, n, batch_size):
            if stop and stop.is_set():
                return
            count = min(batch_size, n - start)
            latents = rng.standard_normal((count, self.info.latent_size), dtype=np.float32)
            yield start, latents if code is None else with_code(latents, self.codes, code)


def with_code(latents: np.ndarray, codes: int, code: int) -> np.ndarray:
    """Latents whose first `codes` entries have their largest at `code` (swapped there)."""
    latents = latents.copy()
    rows = np.arange(len(latents))
    top = latents[:, :codes].argmax(axis=1)
    latents[rows, top], latents[rows, code] = latents[rows, code], latents[rows, top]
    return latents


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*H, columns*W, C) image, `scale`
    times enlarged; a grid over MAX_GRID_PIXELS is a BadInputError before any allocation."""
    n, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    if not 1 <= scale <= 64 or not 0 <= pad <= 64:
        raise BadInputError(f"grid scale {scale} / pad {pad}: expected scale 1..64 and pad 0..64")
    pixels = (rows * (height + pad) + pad) * (columns * (width + pad) + pad) * scale * scale
    if pixels > MAX_GRID_PIXELS:
        raise BadInputError(
            f"--grid: {n} images of {height}x{width} at scale {scale} make {pixels:,} pixels, over "
            f"{MAX_GRID_PIXELS:,}; lower -n or --grid-scale"
        )
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = image
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid
