"""Generator: seeded latents -> uint8 images, and grids of them.

Latents come from one seeded stream, so image i is the same for a given seed whatever the
batch size or the number of images asked for.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .images import to_pixels
from .model import Model
from .pipeline import ordered_map


class Generator(Model):
    """A generative model: latent vectors in, images out."""

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(N, latent) -> (N, H, W, C) uint8 images."""
        values = self.run(np.ascontiguousarray(latents, dtype=np.float32))
        if self.info.layout == "NCHW":
            values = values.transpose(0, 2, 3, 1)
        return to_pixels(values, self.info)

    def generate(
        self,
        n: int,
        seed: int,
        batch_size: int = 16,
        stop: threading.Event | None = None,
        lanes: int = 1,
    ) -> Iterator[np.ndarray]:
        """Yield n images as (batch, H, W, C) uint8 arrays, one batch at a time, in order;
        `lanes` batches run at once (see pipeline.lanes_for)."""

        def latents() -> Iterator[np.ndarray]:
            rng = np.random.default_rng(seed)
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                yield rng.standard_normal((count, self.info.latent_size), dtype=np.float32)

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-run") as runners:
            yield from ordered_map(self.decode, latents(), runners, lanes + 1, stop)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*H, columns*W, C) image."""
    n, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid
