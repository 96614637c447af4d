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
from typing import Any

import keras
import numpy as np
from PIL import Image

from segen_edge.errors import BadInputError
from segen_edge.files import find_images, is_image_name
from segen_edge.images import load_image, resize_u8
from segen_edge.masks import Pair, load_mask, mask_stem, read_mask_values
from segen_edge.metadata import Preprocessing
from segen_edge.metrics import IGNORE_INDEX

from .labels import remap_ignored

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
        raise BadInputError(f"--val-count is {val_count} for {n} image/mask pairs; expected 1..{n - 1}")
    order = np.random.default_rng(seed).permutation(n)
    held = set(int(i) for i in order[:val_count])
    train = [p for i, p in enumerate(ordered) if i not in held]
    val = [p for i, p in enumerate(ordered) if i in held]
    return train, val


def read_stem_list(path: str | Path, pairs: Sequence[Pair], flag: str) -> list[str]:
    """The stems a split file names, one a line (file names or paths are cut to their stem;
    blank lines and lines starting with # are skipped). Every stem must be in `pairs`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInputError(f"{flag} {path}: no such file; give a text file of stems, one a line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{flag} {path}: cannot read it ({exc})") from None
    stems = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.replace("\\", "/").rsplit("/", 1)[-1]
            stems.append(
                Path(name).stem
                if Path(name).suffix.lower()
                in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
                else name
            )
    if not stems:
        raise BadInputError(f"{flag} {path}: names no stems; expected one stem a line")
    known = {p.stem for p in pairs}
    missing = [s for s in dict.fromkeys(stems) if s not in known]
    if missing:
        raise BadInputError(
            f"{flag} {path}: {len(missing)} of its {len(set(stems))} stems are not image/mask "
            f"pairs of the data (e.g. {missing[0]!r}); check the list against --data"
        )
    return list(dict.fromkeys(stems))


def take_stems(pairs: Sequence[Pair], stems: Sequence[str]) -> tuple[list[Pair], list[Pair]]:
    """(pairs named by `stems`, the rest), each sorted by stem."""
    wanted = set(stems)
    ordered = sorted(pairs, key=lambda p: p.stem)
    return [p for p in ordered if p.stem in wanted], [p for p in ordered if p.stem not in wanted]


# -- segmentation ------------------------------------------------------------------------


@dataclass
class SegmentationArrays:
    """Decoded pairs: images and masks at the model's size (or each at its own size when
    loaded for crop training), plus masks at their own size for evaluation. Pixels of ignored
    ids and pixels outside a validity mask are IGNORE_INDEX in every mask."""

    stems: list[str]
    images_u8: np.ndarray | list[np.ndarray]  # (N, H, W, C) uint8, or N (h, w, C) at own size
    masks: np.ndarray | list[np.ndarray]  # (N, H, W) uint8 class ids (nearest), or N (h, w)
    full_masks: list[np.ndarray]  # each (h, w) at the file's own size, for evaluation


def find_valid_masks(folder: str | Path, stems: Sequence[str]) -> dict[str, Path]:
    """stem -> validity-mask file in `folder` (matched by stem, or stem + a suffix such as
    _mask); every stem must have one."""
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(
            f"--valid-masks {root}: no such folder; give the folder of "
            "validity masks (e.g. the retina field-of-view masks)"
        )
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and not path.name.startswith(".") and is_image_name(path):
            found.setdefault(path.stem, path)
            found.setdefault(mask_stem(path.stem), path)
    missing = [s for s in stems if s not in found]
    if missing:
        raise BadInputError(
            f"--valid-masks {root}: no mask for {len(missing)} of {len(stems)} images (e.g. "
            f"{missing[0]!r}); expected a file named after each image's stem"
        )
    return {s: found[s] for s in stems}


def load_valid(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A validity mask as bool (h, w): nonzero pixels are scored, zero pixels ignored."""
    values, _ = read_mask_values(path)
    if values.shape != shape[:2]:
        raise BadInputError(
            f"{path}: validity mask is {values.shape[0]}x{values.shape[1]} but its image is "
            f"{shape[0]}x{shape[1]}; expected the same height and width"
        )
    return values > 0


def load_segmentation(
    pairs: Sequence[Pair],
    image_size: tuple[int, int] | None,
    channels: int,
    encoding: str,
    ignore_index: Sequence[int] = (IGNORE_INDEX,),
    valid_masks: dict[str, Path] | None = None,
) -> SegmentationArrays:
    """Decode `pairs`; image_size None keeps every image at its own size (crop training).
    Ignored ids become IGNORE_INDEX, as do pixels outside `valid_masks` (stem -> file)."""
    images, masks, full = [], [], []
    for pair in pairs:
        if pair.mask is None:
            raise BadInputError(f"{pair.image}: no mask found for this image")
        image_u8 = load_image(pair.image, channels).image_u8
        mask = remap_ignored(load_mask(pair.mask, encoding), ignore_index)
        if mask.shape != image_u8.shape[:2]:
            raise BadInputError(
                f"{pair.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{pair.image.name} is {image_u8.shape[0]}x{image_u8.shape[1]}; expected the "
                "same height and width"
            )
        if valid_masks is not None:
            inside = load_valid(valid_masks[pair.stem], mask.shape)
            mask = np.where(inside, mask, np.uint8(IGNORE_INDEX)).astype(np.uint8)
        if image_size is None:
            images.append(image_u8)
            masks.append(mask)
        else:
            images.append(resize_u8(image_u8, image_size))
            masks.append(resize_u8(mask, image_size, nearest=True))
        full.append(mask)
    if image_size is None:
        return SegmentationArrays([p.stem for p in pairs], images, masks, full)
    return SegmentationArrays([p.stem for p in pairs], np.stack(images), np.stack(masks), full)


@dataclass(frozen=True)
class Augment:
    """Random changes applied identically to an image and its mask."""

    hflip: bool = True
    vflip: bool = False
    max_zoom: float = 1.25  # random scale-crop: scale in [1, max_zoom], then a random crop
    jitter: float = 0.1  # brightness and contrast, +- this fraction (image only)
    saturation: float = 0.0  # colour saturation, +- this fraction (RGB images only)
    rot90: bool = False  # random quarter turns (half turns only, for non-square samples)
    elastic: float = 0.0  # elastic deformation: std in pixels of a 3x3 grid of displacements

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "hflip": self.hflip,
            "vflip": self.vflip,
            "max_zoom": self.max_zoom,
            "jitter": self.jitter,
            "saturation": self.saturation,
            "rot90": self.rot90,
            "elastic": self.elastic,
        }

    def apply(
        self, image_u8: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = mask.shape
        image_u8, mask = self._flip(image_u8, mask, rng)
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
        return self._colour(image_u8, rng), np.ascontiguousarray(mask)

    def crop(
        self,
        image_u8: np.ndarray,
        mask: np.ndarray,
        size: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A random `size` crop at native scale (zoomed in by up to max_zoom: a smaller
        window resized up), then the flips and colour changes of `apply`."""
        height, width = size
        zoom = rng.uniform(1.0, self.max_zoom) if self.max_zoom > 1.0 else 1.0
        win_h = min(mask.shape[0], max(1, round(height / zoom)))
        win_w = min(mask.shape[1], max(1, round(width / zoom)))
        top = int(rng.integers(0, mask.shape[0] - win_h + 1))
        left = int(rng.integers(0, mask.shape[1] - win_w + 1))
        image_u8 = image_u8[top : top + win_h, left : left + win_w]
        mask = mask[top : top + win_h, left : left + win_w]
        if (win_h, win_w) != size:
            image_u8 = resize_u8(np.ascontiguousarray(image_u8), size)
            mask = resize_u8(np.ascontiguousarray(mask), size, nearest=True)
        image_u8, mask = self._flip(image_u8, mask, rng)
        return self._colour(image_u8, rng), np.ascontiguousarray(mask)

    def _flip(
        self, image_u8: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.hflip and rng.random() < 0.5:
            image_u8, mask = image_u8[:, ::-1], mask[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            image_u8, mask = image_u8[::-1], mask[::-1]
        if self.rot90:
            turns = int(rng.integers(0, 4)) if mask.shape[0] == mask.shape[1] else 2 * int(rng.integers(0, 2))
            image_u8, mask = np.rot90(image_u8, turns), np.rot90(mask, turns)
        if self.elastic > 0:
            image_u8, mask = elastic_warp(image_u8, mask, self.elastic, rng)
        return image_u8, mask

    def _colour(self, image_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.jitter <= 0 and (self.saturation <= 0 or image_u8.shape[-1] != 3):
            return np.ascontiguousarray(image_u8)
        pixels = image_u8.astype(np.float32)
        if self.jitter > 0:
            gain = rng.uniform(1 - self.jitter, 1 + self.jitter)  # contrast
            shift = rng.uniform(-self.jitter, self.jitter) * 255  # brightness
            mean = pixels.mean()
            pixels = (pixels - mean) * gain + mean + shift
        if self.saturation > 0 and pixels.shape[-1] == 3:
            grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
            factor = rng.uniform(1 - self.saturation, 1 + self.saturation)
            pixels = grey[..., None] + (pixels - grey[..., None]) * factor
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def elastic_warp(
    image_u8: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The U-Net paper's elastic deformation: random displacements (std `sigma` pixels) on a
    coarse 3x3 grid, interpolated bicubically to a smooth field over the sample; the image
    is resampled bilinearly, the mask by its nearest label (mirrored at the edges)."""
    height, width = mask.shape
    coarse = rng.normal(0.0, sigma, (2, 3, 3)).astype(np.float32)
    dy, dx = (
        np.asarray(Image.fromarray(c, mode="F").resize((width, height), Image.Resampling.BICUBIC))
        for c in coarse
    )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    sy, sx = _mirror(rows + dy, height), _mirror(cols + dx, width)
    y0, x0 = np.floor(sy).astype(np.intp), np.floor(sx).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    src = image_u8.astype(np.float32).reshape(height, width, -1)
    top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
    warped = np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
    labels = mask[np.rint(sy).astype(np.intp), np.rint(sx).astype(np.intp)]
    return warped.reshape(image_u8.shape), labels


def _mirror(coords: np.ndarray, n: int) -> np.ndarray:
    """Coordinates reflected back into [0, n - 1] (as mirror padding does)."""
    if n == 1:
        return np.zeros_like(coords)
    period = 2 * (n - 1)
    folded = np.abs(coords) % period
    return np.where(folded > n - 1, period - folded, folded)


class SegmentationBatches(keras.utils.PyDataset):
    """Batches of (model-scaled float32 images (N, H, W, C), int32 masks (N, H, W)).

    Images are scaled by `preprocessing` (ModelInfo.preprocessing: the runtime's own
    scaling). With `crop`, each image contributes a random crop of that size at native scale.
    Deterministic: batch `i` of epoch `e` depends only on (seed, e, i). `repeats` makes an
    epoch pass over small data sets several times (each pass differently augmented).
    """

    def __init__(
        self,
        arrays: SegmentationArrays,
        batch_size: int,
        preprocessing: Preprocessing,
        augment: Augment | None = None,
        seed: int = 0,
        shuffle: bool = True,
        repeats: int = 1,
        crop: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.arrays = arrays
        self.batch_size = batch_size
        self.preprocessing = preprocessing
        self.augment = augment
        self.seed = seed
        self.shuffle = shuffle
        self.repeats = max(1, repeats)
        self.crop = crop
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
            if self.crop is not None:
                image_u8, mask = (self.augment or Augment(False, False, 1.0, 0.0)).crop(
                    image_u8, mask, self.crop, rng
                )
            elif self.augment is not None:
                image_u8, mask = self.augment.apply(image_u8, mask, rng)
            images.append(image_u8)
            masks.append(mask)
        batch = self.preprocessing.to_model(np.stack(images))
        return batch, np.stack(masks).astype(np.int32)


def scale_images(
    images_u8: np.ndarray, preprocessing: Preprocessing | float, pixel_offset: float = 0.0
) -> np.ndarray:
    """uint8 (N, H, W, C) images -> model values, as the runtime scales them: through a
    Preprocessing object, or by one pixel_scale and pixel_offset for every channel."""
    if isinstance(preprocessing, Preprocessing):
        return preprocessing.to_model(images_u8)
    channels = images_u8.shape[-1]
    return Preprocessing(
        "NHWC", channels, (float(preprocessing),) * channels, (float(pixel_offset),) * channels
    ).to_model(images_u8)


# -- GAN data ----------------------------------------------------------------------------

_IDX_TYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


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
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
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
            test_images = _to_channels(fit_images(read_idx(test_path)[..., None], image_size), channels)
            test_labels = read_idx(test_labels_path).astype(np.int64)
        if limit:
            images = images[:limit]
            labels = labels[:limit] if labels is not None else None
        fashion = "fashion" in folder.resolve().name.lower()
        names = FASHION_NAMES if fashion else tuple(str(i) for i in range(10))
        return GanData(
            folder.resolve().name,
            _to_channels(fit_images(images, image_size), channels),
            labels,
            names,
            test_images,
            test_labels,
        )
    return _load_image_folder(folder, image_size, channels, limit)


def _to_channels(images_u8: np.ndarray, channels: int) -> np.ndarray:
    if images_u8.shape[-1] == channels:
        return images_u8
    if channels == 3:
        return np.repeat(images_u8, 3, axis=-1)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(images_u8.astype(np.float32) @ weights), 0, 255).astype(np.uint8)[..., None]


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
    labels = np.array([groups.index(s.rel.parts[0]) for s in sources], dtype=np.int64) if labelled else None
    return GanData(folder.resolve().name, np.stack(images), labels, tuple(groups) if labelled else ())


def save_grid(path: str | Path, images_u8: np.ndarray, columns: int = 8) -> None:
    """Save (N, H, W, C) uint8 images as one grid PNG (1-pixel gaps)."""
    from segen_edge.files import save_image

    n, h, w, c = images_u8.shape
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.uint8)
    for i, image in enumerate(images_u8):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = image
    save_image(path, grid if c == 3 else grid[:, :, :1])
