"""How far a data set's boundary labels sit from the dark lines they trace, to a tenth of a pixel.

    python scripts/label_offset.py ../shared/data/membrane/train --class-value 0

For data sets whose labelled class is drawn on dark structures (cell membranes in electron
microscopy, vessels, cracks): correlates the image's darkness with the class's label mask,
both centred, over every pair at whole-pixel shifts of the label, and fits a parabola
through the peak on each axis. A label that sits off its image by a fraction of a pixel is
learnable, but not under augmentations that mirror it the other way: a vertical flip
turns an offset of +d rows into -d, so the net sees both and learns neither. That is why
unet-membrane's recipe (scripts/build_models.sh) has no --vflip.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segen_edge.errors import SegenError  # noqa: E402
from segen_edge.images import load_image  # noqa: E402
from segen_edge.masks import find_pairs, read_mask_values  # noqa: E402


def correlation(dark: np.ndarray, label: np.ndarray, reach: int) -> np.ndarray:
    """(2 reach + 1)^2 mean products of centred darkness and the label rolled by (dy, dx)."""
    cut = (slice(None), slice(reach, -reach), slice(reach, -reach))
    out = np.empty((2 * reach + 1, 2 * reach + 1))
    for i, dy in enumerate(range(-reach, reach + 1)):
        for j, dx in enumerate(range(-reach, reach + 1)):
            out[i, j] = float((dark[cut] * np.roll(label, (dy, dx), axis=(1, 2))[cut]).mean())
    return out


def peak(left: float, centre: float, right: float) -> float:
    """Sub-pixel position of a parabola's vertex through three samples at -1, 0, +1."""
    curve = left - 2 * centre + right
    return 0.0 if curve == 0 else 0.5 * (left - right) / curve


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="a data set folder in any layout `train --data` reads")
    parser.add_argument(
        "--class-value", type=int, default=0, help="the label value of the dark class (default 0)"
    )
    parser.add_argument("--reach", type=int, default=3, help="largest whole-pixel shift tried")
    args = parser.parse_args()

    try:
        found = [(p.image, p.mask) for p in find_pairs(args.data) if p.mask is not None]
        grey = np.stack([load_image(image, 1).image_u8[..., 0].astype(np.float32) for image, _ in found])
        label = np.stack([read_mask_values(mask)[0] == args.class_value for _, mask in found])
    except SegenError as exc:
        raise SystemExit(f"no image/label pairs to measure: {exc}") from None
    except ValueError as exc:  # np.stack: pairs of different sizes
        raise SystemExit(f"{args.data}: images or labels differ in size ({exc}); give one size") from None
    dark = grey.mean() - grey
    mask = label.astype(np.float32) - label.mean()
    table = correlation(dark, mask, args.reach)
    r = args.reach
    i, j = np.unravel_index(int(table.argmax()), table.shape)
    if not (0 < i < 2 * r and 0 < j < 2 * r):
        raise SystemExit(f"the correlation peaks at the edge of +-{r} px; try a larger --reach")
    dy = i - r + peak(table[i - 1, j], table[i, j], table[i + 1, j])
    dx = j - r + peak(table[i, j - 1], table[i, j], table[i, j + 1])
    print(f"{len(found)} pairs; correlation of darkness with label {args.class_value} at shifts -{r}..{r}:")
    print("dy\\dx " + " ".join(f"{d:>7d}" for d in range(-r, r + 1)))
    for row, dy_whole in zip(table, range(-r, r + 1), strict=True):
        print(f"{dy_whole:>5d} " + " ".join(f"{v:>7.3f}" for v in row))
    print(f"best alignment: move the labels {dy:+.2f} px down and {dx:+.2f} px right")
    print(
        f"(the labels sit {abs(dy):.2f} px {'above' if dy > 0 else 'below'} and "
        f"{abs(dx):.2f} px {'left of' if dx > 0 else 'right of'} the structures they trace)"
    )


if __name__ == "__main__":
    main()
