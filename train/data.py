"""Training data: seeded splits, segmentation batches with paired augmentation, GAN images.

Images are decoded with segen_edge.images.load_image, resized as segen_edge.images.preprocess
resizes (bilinear, to the model's image_size) and scaled by the same
`pixel * pixel_scale + pixel_offset`, so the runtime feeds the model exactly what training
did. Masks are always resized by nearest neighbour.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from segen_edge.errors import BadInputError
from segen_edge.images import find_images, load_image, resize_u8
from segen_edge.masks import Pair, load_mask

# -- splits ------------------------------------------------------------------------------


def split_pairs(
    pairs: Sequence[Pair], seed: int, val_fraction: float = 0.2, val_count: int | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Seeded train/validation split of pairs (sorted by stem first, so the same data and
    seed always hold out the same stems). Returns (train, val), each sorted by stem."""
    ordered = sorted(pairs, key=lambda p: p.stem)
    n = len(ordered)
    if val_count is None:
        if not 0.0 < val_fraction < 1.0:
            raise BadInputError(f"--val-fraction is {val_fraction}; expected between 0 and 1")
        val_count = max(1, round(n * val_fraction))
    if not 0 < val_count < n:
        raise BadInputError(
            f"--val-count is {val_count} for {n} image/mask pairs; expected 1..{n - 1}"
        )
    order = np.random.default_rng(seed).permutation(n)
    held = set(int(i) for i in order[:val_count])
    train = [p for i, p in enumerate(ordered) if i not in held]
    val = [p for i, p in enumerate(ordered) if i in held]
    return train, val


# -- segmentation ------------------------------------------------------------------------


@dataclass
class SegmentationArrays:
    """Decoded pairs: images and masks at the model's size, plus masks at their own size."""

    stems: list[str]
    images_u8: np.ndarray  # (N, H, W, C) uint8 at image_size
    masks: np.ndarray  # (N, H, W) uint8 class ids at image_size (nearest)
    full_masks: list[np.ndarray]  # each (h, w) at the file's own size, for evaluation


def load_segmentation(
    pairs: Sequence[Pair], image_size: tuple[int, int], channels: int, encoding: str
) -> SegmentationArrays:
    images, masks, full = [], [], []
    for pair in pairs:
        if pair.mask is None:
            raise BadInputError(f"{pair.image}: no mask found for this image")
        image_u8 = load_image(pair.image, channels).image_u8
        mask = load_mask(pair.mask, encoding)
        if mask.shape != image_u8.shape[:2]:
            raise BadInputError(
                f"{pair.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{pair.image.name} is {image_u8.shape[0]}x{image_u8.shape[1]}; expected the "
                "same height and width"
            )
        images.append(resize_u8(image_u8, image_size))
        masks.append(resize_u8(mask, image_size, nearest=True))
        full.append(mask)
    return SegmentationArrays(
        [p.stem for p in pairs], np.stack(images), np.stack(masks), full
    )


@dataclass(frozen=True)
class Augment:
    """Random changes applied identically to an image and its mask."""

    hflip: bool = True
    vflip: bool = False
    max_zoom: float = 1.25  # random scale in [1, max_zoom], then a random crop back
    jitter: float = 0.1  # brightness and contrast, +- this fraction (image only)

    def apply(
        self, image_u8: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = mask.shape
        if self.hflip and rng.random() < 0.5:
            image_u8, mask = image_u8[:, ::-1], mask[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            image_u8, mask = image_u8[::-1], mask[::-1]
        if self.max_zoom > 1.0:
            zoom = rng.uniform(1.0, self.max_zoom)
            big = (round(height * zoom), round(width * zoom))
            if big != (height, width):
                image_u8 = resize_u8(np.ascontiguousarray(image_u8), big)
                mask = resize_u8(np.ascontiguousarray(mask), big, nearest=True)
                top = int(rng.integers(0, big[0] - height + 1))
                left = int(rng.integers(0, big[1] - width + 1))
                image_u8 = image_u8[top : top + height, left : left + width]
                mask = mask[top : top + height, left : left + width]
        if self.jitter > 0:
            gain = rng.uniform(1 - self.jitter, 1 + self.jitter)  # contrast
            shift = rng.uniform(-self.jitter, self.jitter) * 255  # brightness
            pixels = image_u8.astype(np.float32)
            mean = pixels.mean()
            pixels = (pixels - mean) * gain + mean + shift
            image_u8 = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image_u8), np.ascontiguousarray(mask)


class SegmentationBatches(keras.utils.PyDataset):
    """Batches of (scaled float32 images (N, H, W, C), int32 masks (N, H, W)).

    Deterministic: batch `i` of epoch `e` depends only on (seed, e, i). `repeats` makes an
    epoch pass over small data sets several times (each pass differently augmented).
    """

    def __init__(
        self,
        arrays: SegmentationArrays,
        batch_size: int,
        pixel_scale: float,
        pixel_offset: float,
        augment: Augment | None = None,
        seed: int = 0,
        shuffle: bool = True,
        repeats: int = 1,
    ) -> None:
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.pixel_scale = np.float32(pixel_scale)
        self.pixel_offset = np.float32(pixel_offset)
        self.augment = augment
        self.seed = seed
        self.shuffle = shuffle
        self.repeats = max(1, repeats)
        self.epoch = 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        n = len(self.arrays.stems)
        order = np.tile(np.arange(n), self.repeats)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._make_order()

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        images, masks = [], []
        for i in picks:
            image_u8, mask = self.arrays.images_u8[i], self.arrays.masks[i]
            if self.augment is not None:
                image_u8, mask = self.augment.apply(image_u8, mask, rng)
            images.append(image_u8)
            masks.append(mask)
        batch = np.stack(images).astype(np.float32) * self.pixel_scale + self.pixel_offset
        return batch, np.stack(masks).astype(np.int32)


def scale_images(images_u8: np.ndarray, pixel_scale: float, pixel_offset: float) -> np.ndarray:
    """uint8 images -> model values, as segen_edge.images.preprocess scales them."""
    return images_u8.astype(np.float32) * np.float32(pixel_scale) + np.float32(pixel_offset)


# -- GAN data ----------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise BadInputError(f"{path}: cannot read the IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise BadInputError(f"{path}: not an IDX file (bad magic number); expected MNIST format")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return data.reshape(dims)


def fit_images(images_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w, C) uint8 -> (N, H, W, C): centred zero padding when the images are at most
    8 pixels smaller on each axis (MNIST 28 -> 32, as LeNet-5 did), else bilinear resize."""
    n, h, w, c = images_u8.shape
    height, width = size
    dh, dw = height - h, width - w
    if (dh, dw) == (0, 0):
        return images_u8
    if 0 <= dh <= 8 and 0 <= dw <= 8:
        out = np.zeros((n, height, width, c), dtype=np.uint8)
        out[:, dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w] = images_u8
        return out
    return np.stack([resize_u8(im, size) for im in images_u8])


@dataclass
class GanData:
    """Real images for a GAN, and their labels when the data set has them."""

    name: str
    images_u8: np.ndarray  # (N, H, W, C) at the model's size
    labels: np.ndarray | None  # (N,) int class ids, or None
    class_names: tuple[str, ...]
    test_images_u8: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def held_out(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (and labels) to judge against: the test split when the data set has a
        labelled one (MNIST's t10k files), else the training images."""
        if self.test_images_u8 is not None and self.test_labels is not None:
            return self.test_images_u8, self.test_labels
        return self.images_u8, self.labels


MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle-boot",
)


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_gan_data(
    data_dir: str | Path, image_size: tuple[int, int], channels: int, limit: int | None = None
) -> GanData:
    """MNIST/Fashion-MNIST IDX files, or a folder of images (subfolders = classes)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: no such folder; give the data set's folder with --data")
    images_path, labels_path = (_find_idx(folder, n) for n in MNIST_FILES)
    if images_path is not None:
        images = read_idx(images_path)[..., None]
        labels = read_idx(labels_path).astype(np.int64) if labels_path else None
        test_images = test_labels = None
        test_path, test_labels_path = (_find_idx(folder, n) for n in MNIST_TEST_FILES)
        if test_path is not None and test_labels_path is not None:
            test_images = _to_channels(fit_images(read_idx(test_path)[..., None], image_size),
                                       channels)
            test_labels = read_idx(test_labels_path).astype(np.int64)
        if limit:
            images = images[:limit]
            labels = labels[:limit] if labels is not None else None
        fashion = "fashion" in folder.resolve().name.lower()
        names = FASHION_NAMES if fashion else tuple(str(i) for i in range(10))
        return GanData(
            folder.resolve().name, _to_channels(fit_images(images, image_size), channels),
            labels, names, test_images, test_labels,
        )
    return _load_image_folder(folder, image_size, channels, limit)


def _to_channels(images_u8: np.ndarray, channels: int) -> np.ndarray:
    if images_u8.shape[-1] == channels:
        return images_u8
    if channels == 3:
        return np.repeat(images_u8, 3, axis=-1)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(images_u8.astype(np.float32) @ weights), 0, 255).astype(np.uint8)[
        ..., None
    ]


def _load_image_folder(
    folder: Path, image_size: tuple[int, int], channels: int, limit: int | None
) -> GanData:
    sources = list(find_images([folder], recursive=True))
    if not sources:
        raise BadInputError(
            f"{folder}: no images and no MNIST IDX files ({MNIST_FILES[0]}); expected one of them"
        )
    if limit:
        sources = sources[:limit]
    groups = sorted({s.rel.parts[0] for s in sources if len(s.rel.parts) > 1})
    labelled = len(groups) > 1 and all(len(s.rel.parts) > 1 for s in sources)
    images = []
    for source in sources:
        image_u8 = load_image(source.path, channels).image_u8
        images.append(resize_u8(image_u8, image_size))
    labels = (
        np.array([groups.index(s.rel.parts[0]) for s in sources], dtype=np.int64)
        if labelled else None
    )
    return GanData(folder.resolve().name, np.stack(images), labels,
                   tuple(groups) if labelled else ())


def save_grid(path: str | Path, images_u8: np.ndarray, columns: int = 8) -> None:
    """Save (N, H, W, C) uint8 images as one grid PNG (1-pixel gaps)."""
    from segen_edge.images import save_image

    n, h, w, c = images_u8.shape
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.uint8)
    for i, image in enumerate(images_u8):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            image
        )
    save_image(path, grid if c == 3 else grid[:, :, :1])

