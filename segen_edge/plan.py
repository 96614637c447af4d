"""Where each input's outputs go: the output plan of a segment run.

Names depend only on the inputs, so they are the same on every run.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from .images import Source, glob_root

# The name each output kind takes after the input's stem (a mask is STEM.png unless --out
# holds inputs). Every suffix here is also in images.OUTPUT_SUFFIXES, never read as input.
SUFFIXES = {
    "mask": ".mask.png",
    "color": ".color.png",
    "overlay": ".overlay.png",
    "cutout": ".cutout.png",
    "binary": ".binary.png",
    "prob": ".prob.npz",
}


class OutputPlan:
    """Where each input's outputs go: `<out>/<relative folder>/<stem>.png` and friends.

    The input tree is mirrored under `out`, so equal stems in different folders never
    collide; two inputs of one folder with the same stem (a.jpg, a.png) get distinct
    names. When `out` is (inside) an input folder, every output takes a `.mask.png` /
    `.color.png` / `.overlay.png` name, which the input scan skips, so no input is ever
    overwritten and a re-run does not segment its own outputs.
    """

    def __init__(self, out_dir: Path, save: Sequence[str], inputs: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.save = tuple(save)
        out = _real(out_dir)
        roots = [_real(_root_of(arg)) for arg in inputs]
        self.suffixed = any(out == r or r in out.parents for r in roots)
        self._claimed: set[Path] = set()

    def targets(self, src: Source) -> dict[str, Path]:
        base = self.out_dir / src.rel.parent / src.rel.stem
        if base in self._claimed:  # a.jpg after a.png: keep both
            alias = f"{src.rel.stem}_{src.rel.suffix.lstrip('.').lower()}"
            base, n = base.with_name(alias), 2
            while base in self._claimed:  # a third a.png (files named one by one)
                base, n = base.with_name(f"{alias}{n}"), n + 1
        self._claimed.add(base)
        names = dict(SUFFIXES, mask=".mask.png" if self.suffixed else ".png")
        out = {kind: base.with_name(base.name + names[kind]) for kind in self.save}
        if any(_real(p) == _real(src.path) for p in out.values()):
            out = {k: base.with_name(base.name + SUFFIXES[k]) for k in self.save}
        return out


def _real(path: Path) -> Path:
    """Path.resolve without its RuntimeError on a symlink loop (Python < 3.13): a looping
    input is reported by the decoder as one failed file, it must not stop the batch."""
    return Path(os.path.realpath(path))


def _root_of(arg: str) -> Path:
    """The folder an input argument scans: itself, its parent, or a glob's fixed prefix."""
    if glob.has_magic(arg):
        return glob_root(arg)
    path = Path(arg)
    return path if path.is_dir() else path.parent
