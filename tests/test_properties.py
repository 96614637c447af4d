"""Property-based tests (hypothesis): decoding, preprocessing and metadata parsing on arbitrary input.

Bounded: few examples each, no deadline (the CPU is shared with training), so the whole
file runs in a few seconds. Each property states what *every* input gets: a result of the
right shape and type, or the one error kind the CLI turns into a clean line.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_segmenter, segmenter_info
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from segen_edge.errors import BadInputError, MetadataError
from segen_edge.images import decode_image, preprocess, to_pixels
from segen_edge.metadata import PREFIX, ModelInfo, stamp_onnx
from segen_edge.onnxmeta import parse_metadata

FEW = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_PIXELS = 1 << 20  # a random header may claim any size: keep the decoder's allocation small


# -- decoding arbitrary bytes ------------------------------------------------------------


def _encoded_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    seeds = []
    for fmt, options in [
        ("PNG", {}),
        ("JPEG", {"exif": exif}),
        ("BMP", {}),
        ("GIF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
    ]:
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **options)
        seeds.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).save(buffer, format="PNG")
    seeds.append(buffer.getvalue())
    return seeds


SEEDS = _encoded_seeds()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A real encoded image with some bytes overwritten and maybe cut short: what disks and
    half-finished copies produce, and far likelier than random bytes to reach the decoders."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def _check_decoded_or_bad(data: bytes, channels: int) -> None:
    try:
        decoded = decode_image(io.BytesIO(data), channels, MAX_PIXELS, name="fuzz")
    except BadInputError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    image = decoded.image_u8
    assert image.dtype == np.uint8 and image.ndim == 3
    assert image.shape[2] == channels
    assert image.shape[0] >= 1 and image.shape[1] >= 1
    assert image.shape[0] * image.shape[1] <= MAX_PIXELS


@FEW
@given(data=st.binary(max_size=512), channels=st.sampled_from([1, 3]))
def test_decode_arbitrary_bytes(data: bytes, channels: int) -> None:
    _check_decoded_or_bad(data, channels)


@settings(FEW, max_examples=150)
@given(data=damaged_images(), channels=st.sampled_from([1, 3]))
def test_decode_damaged_images(data: bytes, channels: int) -> None:
    _check_decoded_or_bad(data, channels)


# -- images round-trip through lossless formats ------------------------------------------

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@FEW
@given(
    pixels=hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))),
    fmt=st.sampled_from(["PNG", "BMP", "TIFF", "WEBP"]),
)
def test_rgb_round_trip(pixels: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = decode_image(io.BytesIO(buffer.getvalue()), 3).image_u8
    assert np.array_equal(decoded, pixels)


@FEW
@given(grey=hnp.arrays(np.uint8, shapes), fmt=st.sampled_from(["PNG", "BMP", "TIFF"]))
def test_grey_round_trip(grey: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format=fmt)
    one = decode_image(io.BytesIO(buffer.getvalue()), 1).image_u8
    assert np.array_equal(one[:, :, 0], grey)
    three = decode_image(io.BytesIO(buffer.getvalue()), 3).image_u8
    assert np.array_equal(three, np.repeat(grey[:, :, None], 3, axis=2))


@FEW
@given(wide=hnp.arrays(np.uint16, shapes), fmt=st.sampled_from(["PNG", "TIFF"]))
def test_16_bit_round_trip_scales(wide: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format=fmt)
    grey = decode_image(io.BytesIO(buffer.getvalue()), 1).image_u8[:, :, 0]
    assert np.array_equal(grey, (wide.astype(np.int64) * 255 // 65535).astype(np.uint8))


@FEW
@given(
    rgb=hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))),
    alpha=st.sampled_from([0, 255]),
)
def test_rgba_composites_on_black(rgb: np.ndarray, alpha: int) -> None:
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), alpha, np.uint8)], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    decoded = decode_image(io.BytesIO(buffer.getvalue()), 3).image_u8
    assert np.array_equal(decoded, rgb if alpha else np.zeros_like(rgb))


# -- preprocessing -----------------------------------------------------------------------

SCALINGS = [(1 / 255, 0.0), (1 / 127.5, -1.0), (1.0, 0.0), (2 / 255, -0.5)]


def _info(size: tuple[int, int], channels: int, scale: float, offset: float) -> ModelInfo:
    return segmenter_info(image_size=size, channels=channels, pixel_scale=scale, pixel_offset=offset)


@FEW
@given(
    image=hnp.arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 3]))),
    size=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    scaling=st.sampled_from(SCALINGS),
)
def test_preprocess_shape_range_and_inverse(
    image: np.ndarray, size: tuple[int, int], scaling: tuple[float, float]
) -> None:
    scale, offset = scaling
    info = _info(size, image.shape[2], scale, offset)
    values = preprocess(image, info)
    assert values.shape == (*size, image.shape[2]) and values.dtype == np.float32
    assert np.isfinite(values).all()
    assert values.min() >= offset - 1e-5 and values.max() <= 255 * scale + offset + 1e-5
    same_size = preprocess(image, _info(image.shape[:2], image.shape[2], scale, offset))
    assert np.array_equal(to_pixels(same_size, info), image)


@FEW
@given(
    values=hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-1e6, 1e6, width=32)),
    scaling=st.sampled_from(SCALINGS),
)
def test_to_pixels_always_gives_valid_pixels(values: np.ndarray, scaling: tuple[float, float]) -> None:
    pixels = to_pixels(values, _info((2, 2), 3, *scaling))
    assert pixels.dtype == np.uint8 and pixels.shape == values.shape
    expected = np.clip(np.rint((values - scaling[1]) / scaling[0]), 0, 255)
    assert np.abs(pixels.astype(np.float64) - expected).max(initial=0) <= 1


# -- ModelInfo from arbitrary metadata ---------------------------------------------------

FIELDS = [
    "task",
    "arch",
    "image_size",
    "channels",
    "layout",
    "pixel_scale",
    "pixel_offset",
    "class_names",
    "palette",
    "latent_size",
    "precision",
    "name",
    "exporter_version",
    "schema_version",
    "card",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["segment", "generate", "NHWC", "NCHW", "fp32", "int8"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from([PREFIX + f for f in FIELDS]) | st.text(max_size=12) | st.just("segen.")
raw_values = st.text(max_size=20) | json_values.map(json.dumps)
VALID = segmenter_info()


def _check_info(info: ModelInfo) -> None:
    assert info.task in ("segment", "generate")
    assert len(info.image_size) == 2 and min(info.image_size) > 0
    assert info.channels in (1, 3)
    assert math.isfinite(info.pixel_scale) and info.pixel_scale != 0
    assert math.isfinite(info.pixel_offset)
    if info.task == "segment":
        assert len(info.class_names) >= 2 and len(info.palette) == len(info.class_names)
    else:
        assert info.latent_size > 0
    assert ModelInfo.from_props(info.to_props()) == info  # what the writer writes, the reader reads


def _from_props_or_metadata_error(props: dict[str, str]) -> None:
    try:
        info = ModelInfo.from_props(props, source="fuzz.onnx")
    except MetadataError as exc:
        assert str(exc).startswith("fuzz.onnx: ")
        return
    _check_info(info)


@FEW
@given(props=st.dictionaries(keys, raw_values, max_size=8))
def test_from_props_on_arbitrary_dicts(props: dict[str, str]) -> None:
    _from_props_or_metadata_error(props)


@settings(FEW, max_examples=150)
@given(
    changes=st.dictionaries(st.sampled_from([PREFIX + f for f in FIELDS]), raw_values, min_size=1, max_size=3)
)
def test_from_props_on_a_valid_model_with_some_keys_replaced(changes: dict[str, str]) -> None:
    _from_props_or_metadata_error(VALID.to_props() | changes)


@FEW
@given(missing=st.sets(st.sampled_from(["task", "arch", "image_size"]), min_size=1))
def test_from_props_names_each_missing_required_key(missing: set[str]) -> None:
    props = {k: v for k, v in VALID.to_props().items() if k[len(PREFIX) :] not in missing}
    with pytest.raises(MetadataError) as caught:
        ModelInfo.from_props(props, source="m.onnx")
    for name in missing:
        assert PREFIX + name in str(caught.value)


@pytest.mark.parametrize(("key", "raw"), [("pixel_scale", "Infinity"), ("pixel_offset", "NaN")])
def test_non_finite_scaling_is_refused(key: str, raw: str) -> None:
    with pytest.raises(MetadataError, match=PREFIX + key):
        ModelInfo.from_props(VALID.to_props() | {PREFIX + key: raw})


def test_deeply_nested_json_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError):
        ModelInfo.from_props(VALID.to_props() | {PREFIX + "card": "[" * 100_000 + "]" * 100_000})


# -- parse_metadata on arbitrary bytes, and on real ONNX files ---------------------------


def _parsed_or_value_error(data: bytes) -> None:
    try:
        props = parse_metadata(data)
    except (ValueError, UnicodeDecodeError):
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())


@FEW
@given(data=st.binary(max_size=300))
def test_parse_metadata_on_arbitrary_bytes(data: bytes) -> None:
    _parsed_or_value_error(data)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = make_segmenter(tmp_path_factory.mktemp("props") / "tiny.onnx", segmenter_info())
    return onnx.load(str(path))


@settings(FEW, max_examples=100)
@given(data=st.data())
def test_parse_metadata_on_damaged_onnx(tiny_model: onnx.ModelProto, data: st.DataObject) -> None:
    raw = bytearray(tiny_model.SerializeToString())
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _parsed_or_value_error(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


utf8_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@FEW
@given(props=st.dictionaries(utf8_text, utf8_text, max_size=6))
def test_parse_metadata_matches_onnx(
    tiny_model: onnx.ModelProto, props: dict[str, str], tmp_path: Path
) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(tiny_model)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert parse_metadata(path.read_bytes()) == expected == props


@st.composite
def model_infos(draw: st.DrawFn) -> ModelInfo:
    n = draw(st.integers(2, 6))
    names = tuple(draw(st.lists(utf8_text, min_size=n, max_size=n)))
    palette = tuple(draw(st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=n, max_size=n)))
    return segmenter_info(
        image_size=draw(st.tuples(st.integers(1, 4096), st.integers(1, 4096))),
        channels=draw(st.sampled_from([1, 3])),
        layout=draw(st.sampled_from(["NHWC", "NCHW"])),
        pixel_scale=draw(st.floats(1e-6, 1e3)),
        pixel_offset=draw(st.floats(-1e3, 1e3)),
        class_names=names,
        palette=palette,
        precision=draw(st.sampled_from(["fp32", "fp16", "int8"])),
        name=draw(utf8_text),
        card=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    )


@FEW
@given(
    info=model_infos(),
    foreign=st.dictionaries(utf8_text.filter(lambda k: not k.startswith(PREFIX)), utf8_text, max_size=3),
)
def test_model_info_round_trips_through_an_onnx_file(
    tiny_model: onnx.ModelProto, info: ModelInfo, foreign: dict[str, str]
) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(tiny_model)
    del model.metadata_props[:]
    for key, value in foreign.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    stamp_onnx(model, info)
    props = parse_metadata(model.SerializeToString())
    assert {k: v for k, v in props.items() if not k.startswith(PREFIX)} == foreign  # kept, never clobbered
    assert ModelInfo.from_props(props) == info


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_class_ids_is_argmax_over_channels(n: int, c: int, h: int, w: int, seed: int, ties: bool) -> None:
    from segen_edge.probabilities import class_ids

    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if ties:  # few distinct values: many ties, which the first class must win, as in argmax
        logits = np.round(logits).astype(np.float32)
    got = class_ids(logits)
    assert got.dtype == np.uint8 and got.shape == (n, h, w)
    np.testing.assert_array_equal(got, np.argmax(logits, axis=1))


# -- output plan and manifest over random input trees (issue 17) ----------------------------

TREE_FOLDERS = ("", "d", "d/e", "f")
TREE_STEMS = ("x", "x.color", "x_png", "y", "a b", "é")
TREE_SUFFIXES = (".png", ".jpg", ".bmp")
TREE_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
OUT_AT = {"outside": "out", "inside": "root/out", "equal": "root", "above": ".", "in-sub": "root/d"}


@pytest.fixture(scope="module")
def tree_segmenter(tmp_path_factory: pytest.TempPathFactory) -> object:
    import segen_edge

    path = make_segmenter(tmp_path_factory.mktemp("tree-model") / "tiny.onnx", segmenter_info())
    return segen_edge.load_segmenter(str(path), device="cpu")


@st.composite
def tree_runs(draw: st.DrawFn) -> dict[str, object]:
    files = draw(
        st.lists(
            st.tuples(
                st.sampled_from(TREE_FOLDERS),
                st.sampled_from(TREE_STEMS),
                st.sampled_from(TREE_SUFFIXES),
                st.integers(0, 2),
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda f: (f[0], f[1], f[2]),
        )
    )
    rels = [str(Path(folder, stem + suffix)) for folder, stem, suffix, _ in files]
    colour = {rel: f[3] for rel, f in zip(rels, files, strict=True)}
    first = draw(st.lists(st.sampled_from(rels), min_size=1, unique=True))
    second = draw(st.lists(st.sampled_from(rels), min_size=1, unique=True))  # added, removed, reordered
    return {
        "colour": colour,
        "first": first,
        "second": second,
        "out_at": draw(st.sampled_from(sorted(OUT_AT))),
        "by": draw(st.sampled_from(["folder", "files", "glob"])),
        "kinds": draw(st.sampled_from([("mask",), ("mask", "color"), ("color", "overlay")])),
    }


def _lay_out(root: Path, rels: list[str], colour: dict[str, int]) -> None:
    """Exactly these input files under root (others removed)."""
    for path in [p for p in root.rglob("*") if p.is_file()] if root.exists() else []:
        rel = str(path.relative_to(root))
        if rel in colour and rel not in rels:
            path.unlink()
    for rel in rels:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (3 + colour[rel], 2 + len(rel) % 3)
            Image.new("RGB", (size[1], size[0]), TREE_COLOURS[colour[rel]]).save(path)


def _args(root: Path, rels: list[str], by: str) -> list[str]:
    if by == "files":
        return [str(root / rel) for rel in rels]
    if by == "glob":
        present = sorted({Path(rel).suffix for rel in rels})
        return [str(root / "**" / f"*{suffix}") for suffix in present]
    return [str(root)]


def _files(base: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in base.rglob("*") if p.is_file()}


def _segment(seg: object, base: Path, rels: list[str], spec: dict[str, object]) -> dict[str, object] | None:
    """One run into the tree under `base`; None when refused (then nothing changed on disk)."""
    from segen_edge.jobs import segment_files
    from segen_edge.plan import PlanError

    root, out = base / "root", (base / OUT_AT[str(spec["out_at"])]).resolve()
    _lay_out(root, rels, spec["colour"])  # type: ignore[arg-type]
    before = _files(base)
    inputs = {os.path.realpath(root / rel) for rel in rels}
    try:
        report = segment_files(
            seg,  # type: ignore[arg-type]
            _args(root, rels, str(spec["by"])),
            out,
            save=spec["kinds"],  # type: ignore[arg-type]
            recursive=True,
            lanes=1,
            batch_size=2,
        )
    except PlanError:
        assert _files(base) == before  # refused before any work
        return None
    after = _files(base)
    outputs = [os.path.realpath(p) for r in report.results for p in r.outputs]
    assert len(outputs) == len(set(outputs))  # no two outputs share a file
    assert not inputs & set(outputs)  # no output is an input
    assert all(o.startswith(str(out) + os.sep) for o in outputs)  # all under --out
    for path, (stamp, data) in before.items():  # nothing that existed was rewritten
        if path.name == "segen-manifest.jsonl":
            assert after[path][1].startswith(data)  # appended to, never rewritten
        else:
            assert after.get(path) == (stamp, data), path
    seen = {}
    for r in report.results:
        assert r.status in ("ok", "skipped"), r.error
        rel = str(r.path.relative_to(root))
        kinds = spec["kinds"]
        assert len(r.outputs) == len(kinds)  # type: ignore[arg-type]
        seen[rel] = {k: np.asarray(Image.open(p)).tobytes() for k, p in zip(kinds, r.outputs, strict=True)}  # type: ignore[call-overload]
    return seen


@settings(FEW, max_examples=80, database=None)
@given(spec=tree_runs())
def test_plan_never_overwrites_and_rerun_equals_a_fresh_run(
    tree_segmenter: object, spec: dict[str, object]
) -> None:
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="segen-tree-"))
    try:
        incremental, fresh = work / "a", work / "b"
        first = _segment(tree_segmenter, incremental, spec["first"], spec)  # type: ignore[arg-type]
        second = _segment(tree_segmenter, incremental, spec["second"], spec)  # type: ignore[arg-type]
        alone = _segment(tree_segmenter, fresh, spec["second"], spec)  # type: ignore[arg-type]
        event("refused" if None in (first, second, alone) else "compared with a fresh run")
        if first is not None and second is not None and alone is not None:
            assert second == alone  # each input's outputs hold what a fresh run gives it
    finally:
        shutil.rmtree(work, ignore_errors=True)
