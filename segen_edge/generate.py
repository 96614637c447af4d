"""Generator: seeded latents -> uint8 images, and grids of them.

Latents come from one seeded stream, so image i is the same for a given seed whatever the
batch size or the number of images asked for.

A generator trained with an InfoGAN code (card key `categorical_code`: K) reads the argmax of
its first K latents as a category; `code=c` swaps each latent's largest head entry into place
c, which draws from the latents of category c exactly (the head's entries are exchangeable).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .images import save_image, to_pixels
from .model import Model
from .pipeline import ordered_map


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    written: bool  # False: the file existed and was kept (no --overwrite)
    image: np.ndarray


class Generator(Model):
    """A generative model: latent vectors in, images out."""

    @property
    def codes(self) -> int:
        """Categories of the model's InfoGAN code (0: none)."""
        return int(self.info.card.get("categorical_code") or 0)

    def check_code(self, code: int | None) -> None:
        if code is None:
            return
        name = self.info.name or self.loaded.path.name
        if not self.codes:
            raise BadInputError(f"--code {code}: {name} has no categorical code (it was trained "
                                "without 'train dcgan --codes'); leave --code out")
        if not 0 <= code < self.codes:
            raise BadInputError(f"--code {code}: {name}'s code has {self.codes} categories; "
                                f"pass 0 to {self.codes - 1}")

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
        code: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield n images as (batch, H, W, C) uint8 arrays, one batch at a time, in order;
        `lanes` batches run at once (see pipeline.lanes_for); `code` picks a category."""

        def decode(item: tuple[int, np.ndarray]) -> np.ndarray:
            return self.decode(item[1])

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-run") as runners:
            batches = self._latents(n, seed, batch_size, stop, code)
            yield from ordered_map(decode, batches, runners, lanes + 1, stop)

    def generate_files(
        self,
        n: int,
        seed: int,
        out: Path,
        name: str,
        batch_size: int = 16,
        overwrite: bool = False,
        stop: threading.Event | None = None,
        lanes: int = 1,
        code: int | None = None,
    ) -> Iterator[GeneratedFile]:
        """Generate n images into `out` as NAME-sSEED-INDEX.png (NAME-cCODE-sSEED-INDEX.png
        with a `code`), in order.

        Each of `lanes` threads takes a whole batch: runs the model and writes its PNGs
        atomically, so writing (often the slow part: creating a file can cost more than
        making a 32x32 image) overlaps with the other lanes. Existing files are kept unless
        `overwrite`. When `stop` is set, the batches in flight are finished and yielded.
        """

        prefix = f"{name}-s{seed}" if code is None else f"{name}-c{code}-s{seed}"

        def make(item: tuple[int, np.ndarray]) -> list[GeneratedFile]:
            start, latents = item
            files = []
            for i, image in enumerate(self.decode(latents), start=start):
                path = out / f"{prefix}-{i:05d}.png"
                keep = not overwrite and path.exists()
                if not keep:
                    save_image(path, image)
                files.append(GeneratedFile(path, not keep, image))
            return files

        with ThreadPoolExecutor(lanes, thread_name_prefix="segen-lane") as pool:
            batches = self._latents(n, seed, batch_size, stop, code)
            for files in ordered_map(make, batches, pool, lanes + 1):
                yield from files

    def _latents(
        self, n: int, seed: int, batch_size: int, stop: threading.Event | None,
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
