"""Segment pets at the size users have them: nearest vs probability upsampling, and edges.

    python benchmarks/pets_full.py [--data ../shared/data/pets-full] [--model unet-pets]
                                   [--picture docs/full-resolution-edges.png]

1. mIoU of the bundled pets segmenter on its held-out stems at their original size
   (`pets-full/`, 150-1646 px wide), three ways:
   - nearest: class ids at 160x160 blown up with nearest neighbour (segen-edge before 0.2),
   - probabilities: softmax probabilities upsampled bilinearly, then the argmax (resize mode),
   - letterbox: the same with the aspect ratio kept (the model was trained squashed, so this
     shows what a mismatched preprocessing costs).
2. A 4000x3000 photo (a pets-full photo enlarged): the share of class changes along rows that
   fall on the model-size grid (every 25th column); nearest puts all of them there.
3. `--picture`: a crop of the 4000x3000 mask edges, nearest beside probabilities, for docs/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

import segen_edge
from segen_edge.evaluate import held_out_pairs
from segen_edge.images import load_image, resize_u8
from segen_edge.masks import load_mask
from segen_edge.metrics import score_masks

ROOT = Path(__file__).resolve().parents[1]


def nearest_ids(seg: segen_edge.Segmenter, image: np.ndarray) -> np.ndarray:
    small = seg.predict_batch(seg.prepare(image)[None])[0]
    return resize_u8(small, image.shape[:2], nearest=True)


def scores(seg: segen_edge.Segmenter, data: Path, encoding: str) -> dict[str, float]:
    pairs = held_out_pairs(data, seg.info.card["held_out"])
    ways = {
        "nearest": lambda im: nearest_ids(seg, im),
        "probabilities": lambda im: seg.segment_arrays([im], seg.settings())[0].ids,
        "letterbox": lambda im: seg.segment_arrays([im], seg.settings(keep_aspect=True))[0].ids,
    }
    out = {}
    for name, predict in ways.items():
        start = time.perf_counter()

        def items(predict=predict):
            for pair in pairs:
                image = load_image(pair.image, seg.info.channels).image_u8
                assert pair.mask is not None
                yield load_mask(pair.mask, encoding), predict(image)

        result = score_masks(items(), len(seg.class_names), class_names=list(seg.class_names))
        out[name] = result["miou"]
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in result["iou"].items())
        print(
            f"  {name:>13}: mIoU {result['miou']:.4f} ({per_class}) on {result['images']} images, "
            f"{time.perf_counter() - start:.1f} s"
        )
    return out


def grid_share(ids: np.ndarray, step: float) -> float:
    """Share of horizontal class changes that sit on a multiple of `step` columns."""
    changes = np.nonzero(ids[:, 1:] != ids[:, :-1])[1] + 1
    if not len(changes):
        return float("nan")
    on_grid = np.abs(changes / step - np.round(changes / step)) * step < 0.5
    return float(on_grid.mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pets-full")
    parser.add_argument("--model", default="unet-pets")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    seg = segen_edge.load_segmenter(args.model, device="cpu", precision=args.precision)
    encoding = seg.info.card.get("mask_encoding", "auto")
    print(
        f"{seg.name} {seg.info.precision}, model input {seg.info.height}x{seg.info.width}, data {args.data}"
    )
    scores(seg, args.data, encoding)

    photo = sorted((args.data / "images").glob("*.jpg"))[0]
    big = resize_u8(load_image(photo).image_u8, (3000, 4000))
    near = nearest_ids(seg, big)
    smooth = seg.segment(big).ids
    step = 4000 / seg.info.width
    print(
        f"4000x3000 ({photo.name} enlarged): class changes on the {seg.info.width}-column grid: "
        f"nearest {100 * grid_share(near, step):.1f}%, probabilities {100 * grid_share(smooth, step):.1f}% "
        f"(a change lands on the grid by chance {100 / step:.1f}% of the time)"
    )
    if args.picture:
        changes = np.argwhere(smooth[:, 1:] != smooth[:, :-1])
        y, x = changes[len(changes) // 2] if len(changes) else (1500, 2000)
        top, left = int(np.clip(y - 150, 0, 2700)), int(np.clip(x - 200, 0, 3600))
        crop = (slice(top, top + 300), slice(left, left + 400))
        palette = seg.palette_u8
        panels = [big[crop], palette[near[crop]], palette[smooth[crop]]]
        sheet = np.concatenate(
            [np.pad(p, ((4, 4), (4, 4), (0, 0)), constant_values=255) for p in panels], axis=1
        )
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(args.picture)
        print(
            f"wrote {args.picture}: photo | nearest | probabilities, rows {top}-{top + 300}, cols {left}-{left + 400}"
        )


if __name__ == "__main__":
    main()
