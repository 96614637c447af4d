"""The on-disk cache of optimized graphs (CPU provider) and OpenVINO's compiled models,
keyed by the model's bytes, its external data files, the engines' versions and the CPU."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .providers import cpu_flags, cpu_name, runtime_versions

# -- cache --------------------------------------------------------------------------------
#
# onnxruntime optimizes a graph (fusions, QDQ -> QLinear ops, NCHWc layouts) every time a
# session starts; for the int8 U-Net that is most of the 74 ms it takes to open. The CPU
# provider can save the optimized graph, which then opens in about 20 ms with optimization
# off. The saved graph can hold kernels for this CPU's instruction set, so the cache key is
# the model's bytes, the external data files it names, the onnxruntime version and the CPU's
# model name and flags. OpenVINO's compiled models are cached in a folder of the same key.

CACHE_ENV = "SEGEN_EDGE_CACHE"  # a folder, or "off"
_HASH_LIMIT = 64 << 20  # external data files up to this size are hashed, larger ones stat'ed


def cache_dir() -> Path | None:
    """Where optimized graphs are kept: $SEGEN_EDGE_CACHE, else $XDG_CACHE_HOME/segen-edge
    (~/.cache/segen-edge); None when $SEGEN_EDGE_CACHE is "off"."""
    given = os.environ.get(CACHE_ENV, "")
    if given.lower() in ("off", "0", "none"):
        return None
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segen-edge"


@functools.cache
def _cpu_identity() -> str:
    return f"{cpu_name()}\n{' '.join(sorted(cpu_flags()))}"


def external_data_files(model_bytes: bytes) -> list[str]:
    """The `location`s of the external data files a serialized ModelProto's initializers
    name (graph field 7, initializer field 5, TensorProto external_data 13)."""
    from .onnxmeta import _fields

    found: list[str] = []
    try:
        for number, wire, graph in _fields(memoryview(model_bytes)):
            if number != 7 or wire != 2:
                continue
            for g_number, g_wire, tensor in _fields(graph):  # type: ignore[arg-type]
                if g_number != 5 or g_wire != 2:
                    continue
                for t_number, t_wire, entry in _fields(tensor):  # type: ignore[arg-type]
                    if t_number != 13 or t_wire != 2:
                        continue
                    pair = {n: bytes(v) for n, w, v in _fields(entry) if w == 2}  # type: ignore
                    if pair.get(1) == b"location" and 2 in pair:
                        found.append(pair[2].decode("utf-8", "replace"))
    except ValueError:
        return []  # not a model: onnxruntime will say so
    return sorted(set(found))


def _external_identity(model: Path, model_bytes: bytes) -> str:
    """Name, size and mtime of each external data file (and the bytes of small ones)."""
    parts = []
    for location in external_data_files(model_bytes):
        target = model.parent / location
        try:
            stat = target.stat()
        except OSError:
            parts.append(f"{location}: missing")
            continue
        part = f"{location}: {stat.st_size} {stat.st_mtime_ns}"
        if stat.st_size <= _HASH_LIMIT:
            with contextlib.suppress(OSError):
                part += " " + hashlib.sha256(target.read_bytes()).hexdigest()
        parts.append(part)
    return "\n".join(parts)


def cache_key(model: Path) -> str | None:
    """The digest that names `model`'s cache entries here, or None when it cannot be read."""
    try:
        data = model.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data)
    digest.update(_external_identity(model, data).encode())
    digest.update(f"{runtime_versions()}\n{_cpu_identity()}".encode())
    return digest.hexdigest()[:20]


def optimized_path(model: Path) -> Path | None:
    """The cache file for `model`'s optimized graph on this CPU and onnxruntime, or None."""
    folder = cache_dir()
    key = cache_key(model) if folder is not None else None
    if folder is None or key is None:
        return None
    return folder / f"{model.stem}-{key}.ort.onnx"


def openvino_cache(model: Path | None) -> Path | None:
    """The folder for OpenVINO's compiled blobs of `model`, or None (no cache, or bytes)."""
    folder = cache_dir()
    key = cache_key(model) if folder is not None and model is not None else None
    if folder is None or key is None or model is None:
        return None
    target = folder / f"{model.stem}-{key}.openvino"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return target if target.is_dir() and os.access(target, os.W_OK) else None


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary name beside `target` that never outlives the block."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
