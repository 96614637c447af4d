"""Score generators under one or more GAN quality classifiers, over several latent draws.

    python scripts/score_generator.py dcgan-mnist runs/dcgan-mnist/onnx/dcgan-mnist-fp32.onnx \
        --classifier runs/mnist-classifier --classifier runs/mnist-classifier-seed1 \
        --samples 1000 --seeds 1 2 3 4 5

Models are bundled names or ONNX files; images come from the runtime's own path
(`segen-edge generate -n SAMPLES --seed S` makes the same ones). Classifiers are caches that
`python -m train dcgan` wrote (train/quality.py). Prints one Markdown row per model and
classifier: the confident fraction of each draw, their mean and spread, the smallest class
share and the Frechet distance (mean over draws) beside the classifier's real-vs-real floor.
Each classifier is shown with its own doubts: accuracy and confident fraction on real held-out
images, and the confident fraction on 50/50 blends of two classes (train/quality.py; taken
from its cache, or measured on --data's held-out images for caches written before it was
recorded).
Needs the train extra (the classifiers are Keras models).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from segen_edge.loading import load_generator
from train.data import load_gan_data
from train.quality import QualityScorer, blend_confidence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="bundled name or .onnx file")
    parser.add_argument(
        "--classifier",
        action="append",
        required=True,
        help="quality classifier cache folder (repeat for several)",
    )
    parser.add_argument("--samples", type=int, default=1000, help="images per draw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one draw per seed")
    parser.add_argument(
        "--data", help="the classifiers' data set, to measure the blend check for caches that lack it"
    )
    args = parser.parse_args(argv)

    scorers = {path: QualityScorer.load(path) for path in args.classifier}
    for scorer in scorers.values():
        if scorer.info.get("blend_confident_fraction") is None and args.data:
            images, labels = load_gan_data(args.data, scorer.image_size, scorer.channels).held_out()
            if labels is None:
                raise SystemExit(f"{args.data}: no class labels, so no blend check")
            scorer.info["blend_confident_fraction"] = blend_confidence(
                scorer.probabilities, images, labels, scorer.info.get("seed", 0)
            )
    print(
        "| model | classifier (real: accuracy, confident; blends: confident) "
        "| confident per draw | mean +- sd "
        "| min class | Frechet (floor) |"
    )
    print("|---|---|---|---|---|---|")
    for spec in args.models:
        generator = load_generator(spec, device="cpu")
        draws = {
            seed: np.asarray(generator.generate(args.samples, seed=seed, batch_size=500))
            for seed in args.seeds
        }
        for path, scorer in scorers.items():
            scores = [scorer.score(images_u8) for images_u8 in draws.values()]
            confident = [s["confident_fraction"] for s in scores]
            spread = statistics.stdev(confident) if len(confident) > 1 else 0.0
            blends = scorer.info.get("blend_confident_fraction")
            real = f"{scorer.info['real_accuracy']:.4f}, {scorer.info['real_confident_fraction']:.3f}; " + (
                "-" if blends is None else f"{blends:.3f}"
            )
            print(
                f"| {spec} | {path} ({real}) | {', '.join(f'{c:.3f}' for c in confident)} "
                f"| {statistics.mean(confident):.3f} +- {spread:.3f} "
                f"| {min(s['min_class_coverage'] for s in scores):.3f} "
                f"| {statistics.mean(s['frechet_distance'] for s in scores):.2f} "
                f"({scorer.floor:.2f}) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
