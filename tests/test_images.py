"""Decoding every kind of image a real folder holds, finding inputs, preprocessing, atomic writes.

Images are written by the tests (Pillow), never downloaded. Expectations are computed:
shapes, where a coloured corner lands, how 16-bit values scale.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segen_edge.errors import BadInputError, SegenError
from segen_edge.files import WriteError, atomic_write, find_images, save_image
from segen_edge.images import decode_image, load_image, preprocess, to_pixels
from segen_edge.metadata import ModelInfo

RED = (255, 0, 0)
GREEN = (0, 255, 0)


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, channels: int = 3, **kwargs: object) -> np.ndarray:
    return decode_image(io.BytesIO(data), channels, name="img", **kwargs).image_u8  # type: ignore[arg-type]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height RGB, then a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- modes -------------------------------------------------------------------------------


def test_grey_becomes_rgb_or_stays_grey() -> None:
    data = encode(Image.new("L", (3, 2), 100), "PNG")
    rgb = decode(data, 3)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb == 100).all()
    grey = decode(data, 1)
    assert grey.shape == (2, 3, 1) and (grey == 100).all()


def test_la_and_rgba_composite_on_black() -> None:
    la = decode(encode(Image.new("LA", (3, 2), (200, 128)), "PNG"))
    assert la.shape == (2, 3, 3)
    assert np.allclose(la, 200 * 128 / 255, atol=1)
    opaque = decode(encode(Image.new("RGBA", (3, 2), (*RED, 255)), "PNG"))
    assert (opaque.reshape(-1, 3) == RED).all()
    clear = decode(encode(Image.new("RGBA", (3, 2), (*RED, 0)), "PNG"))
    assert (clear == 0).all()
    assert decode(encode(Image.new("RGBA", (3, 2)), "PNG"), 1).shape == (2, 3, 1)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_with_and_without_transparency(transparent: bool) -> None:
    img = Image.new("P", (4, 2), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    options = {"transparency": 0} if transparent else {}
    out = decode(encode(img, "PNG", **options))
    assert out.shape == (2, 4, 3)
    assert tuple(out[1, 3]) == (10, 20, 30)  # the palette colour, not the index
    assert tuple(out[0, 0]) == (0, 0, 0)  # index 0 is black; transparent composites on black


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_scales_to_8_bit(fmt: str) -> None:
    wide = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 13000).astype(np.uint16)
    img = Image.fromarray(wide)
    assert img.mode == "I;16"
    out = decode(encode(img, fmt), 1)[:, :, 0]
    expected = (wide.astype(np.int64) * 255 // 65535).astype(np.uint8)  # 65000 -> 252, not 255
    assert np.array_equal(out, expected)
    dark = decode(encode(Image.fromarray(np.full((2, 2), 200, np.uint16)), fmt), 1)
    assert (dark == 0).all()  # 200/65535 is near black, not 200/255


def test_cmyk_jpeg() -> None:
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    out = decode(encode(img, "JPEG", quality=95))
    assert out.shape == (6, 8, 3)
    r, g, b = (int(v) for v in out[3, 4])
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {"lossless": True}), ("BMP", {})],
)
def test_other_formats(fmt: str, options: dict[str, object]) -> None:
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[:, :4] = RED
    rgb[:, 4:] = GREEN
    out = decode(encode(Image.fromarray(rgb), fmt, **options))
    assert np.array_equal(out, rgb)


def test_one_by_one_image(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), RED).save(path)
    decoded = load_image(path)
    assert decoded.size == (1, 1)
    assert tuple(decoded.image_u8[0, 0]) == RED


# -- EXIF orientation --------------------------------------------------------------------


def _oriented_jpeg(orientation: int) -> bytes:
    """A 20x40 (height x width) black JPEG with a red top-left corner and an EXIF orientation."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:6, :6] = RED
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)


def _red_corner(image: np.ndarray) -> str:
    h, w = image.shape[:2]
    corners = {
        "top-left": (0, 0),
        "top-right": (0, w - 1),
        "bottom-left": (h - 1, 0),
        "bottom-right": (h - 1, w - 1),
    }
    red = [name for name, (y, x) in corners.items() if image[y, x, 0] > 200 and image[y, x, 1] < 60]
    assert len(red) == 1, red
    return red[0]


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (20, 40, 3), "top-left"),
        (3, (20, 40, 3), "bottom-right"),  # rotated 180
        (6, (40, 20, 3), "top-right"),  # stored rotated: displayed turned 90 degrees clockwise
        (8, (40, 20, 3), "bottom-left"),  # displayed turned 90 degrees counter-clockwise
    ],
)
def test_exif_orientation_is_applied(orientation: int, shape: tuple[int, int, int], corner: str) -> None:
    out = decode(_oriented_jpeg(orientation))
    assert out.shape == shape
    assert _red_corner(out) == corner


# -- animated ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "options"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animated_image_gives_first_frame_and_a_note(fmt: str, options: dict[str, object]) -> None:
    first, second = Image.new("RGB", (4, 3), RED), Image.new("RGB", (4, 3), GREEN)
    data = encode(first, fmt, save_all=True, append_images=[second], duration=100, **options)
    decoded = decode_image(io.BytesIO(data), 3)
    assert decoded.size == (3, 4)
    assert (decoded.image_u8.reshape(-1, 3) == RED).all()
    assert "animated" in decoded.note and "2 frames" in decoded.note and "first frame" in decoded.note


def test_still_image_has_no_note() -> None:
    assert decode_image(io.BytesIO(encode(Image.new("RGB", (2, 2)), "PNG"))).note == ""


# -- broken files ------------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_file(tmp_path: Path, fmt: str, keep: float) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BadInputError, match=r"cut\.\w+: not a readable image \(truncated file\)"):
        load_image(path)


def test_damaged_tiffs_fail_without_decoder_chatter(tmp_path: Path) -> None:
    """libtiff prints warnings on fd 2 and Pillow logs some TIFF errors, naming no file:
    none of it may reach the user, whose stderr holds our one line per file."""
    noise = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    whole = encode(Image.fromarray(noise), "TIFF", compression="tiff_lzw")
    rng = np.random.default_rng(3)
    for i in range(40):
        damaged = bytearray(whole)
        for at in rng.integers(0, len(damaged), 3):
            damaged[at] = int(rng.integers(0, 256))
        (tmp_path / f"t{i:02d}.tif").write_bytes(bytes(damaged))
    plain = bytearray(encode(Image.new("RGB", (4, 3)), "TIFF"))
    at = plain.find(b"\x15\x01\x03\x00\x01\x00\x00\x00")  # SamplesPerPixel, SHORT, 1 value
    plain[at + 8 : at + 10] = (2048).to_bytes(2, "little")  # Pillow logs 'More samples per pixel ...'
    (tmp_path / "spp.tif").write_bytes(bytes(plain))
    script = (
        "import sys, pathlib; from segen_edge.images import load_image\n"
        "failed = 0\n"
        "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.tif')):\n"
        "    try: load_image(p)\n"
        "    except ValueError: failed += 1\n"
        "print(failed)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0
    assert int(done.stdout) > 10  # most of them are really broken
    assert done.stderr == ""


def test_text_file_with_image_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n")
    with pytest.raises(BadInputError, match=r"notes\.jpg: not an image Pillow can read; expected PNG, JPEG"):
        load_image(path)


def test_folder_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").mkdir()
    with pytest.raises(BadInputError, match=r"x\.png: is a folder, not an image"):
        load_image(tmp_path / "x.png")
    assert list(find_images([tmp_path])) == []  # skipped without --recursive, never decoded


def test_missing_and_broken_symlink(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="file not found"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "dead.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadInputError, match=r"dead\.png: broken symlink"):
        load_image(tmp_path / "dead.png")


def test_self_referencing_symlink(tmp_path: Path) -> None:
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    with pytest.raises(BadInputError, match=r"self\.png: symlink loop"):
        load_image(tmp_path / "self.png")


def test_fifo_named_like_an_image_does_not_hang(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load_image(path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the thread can end, then fail
        with open(path, "wb"):
            pass
        pytest.fail("load_image blocked on a FIFO")
    assert isinstance(outcome[0], BadInputError)
    assert "not a regular file" in str(outcome[0])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(BadInputError, match=r"secret\.png: permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


# -- decompression bombs -----------------------------------------------------------------


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 100000 x 100000 RGB would need 30 GB: refusing must happen from the header alone
    with pytest.raises(BadInputError) as caught:
        decode(png_header_only(100_000, 100_000))
    message = str(caught.value)
    assert "100000x100000" in message and "--max-pixels" in message
    assert "decompression bomb" in message


def test_max_pixels_limit_and_raising_it() -> None:
    data = encode(Image.new("RGB", (50, 40), RED), "PNG")
    with pytest.raises(BadInputError, match=r"50x40 is 2,000 pixels, over the limit of 1,000.*--max-pixels"):
        decode(data, max_pixels=1000)
    assert decode(data, max_pixels=2000).shape == (40, 50, 3)


def test_image_that_does_not_fit_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    def out_of_memory(self: object) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(BadInputError, match=r"img: 50x40 does not fit in memory"):
        decode(encode(Image.new("RGB", (50, 40)), "PNG"))


# -- finding inputs ----------------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for rel in ["b.png", "a.jpg", "sub/c.webp", "sub/deeper/d.bmp", "other/a.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(root / rel)
    (root / "readme.txt").write_text("not an image")
    for done in ["a.mask.png", "a.color.png", "a.overlay.png"]:
        Image.new("RGB", (2, 2)).save(root / done)
    return root


def rels(sources: object) -> list[str]:
    return [s.rel.as_posix() for s in sources]  # type: ignore[attr-defined]


def test_find_folder_top_level_only(tree: Path) -> None:
    assert rels(find_images([tree])) == ["a.jpg", "b.png"]  # sorted; .txt and outputs skipped


def test_find_recursive_mirrors_tree(tree: Path) -> None:
    found = rels(find_images([tree], recursive=True))
    assert found == ["a.jpg", "b.png", "other/a.jpg", "sub/c.webp", "sub/deeper/d.bmp"]


def test_find_glob_mirrors_tree_under_its_fixed_part(tree: Path) -> None:
    assert rels(find_images([str(tree / "*.png")])) == ["b.png"]  # a.mask.png etc. skipped
    assert rels(find_images([str(tree / "*" / "*.jpg")])) == ["other/a.jpg"]
    found = rels(find_images([str(tree / "**" / "*.jpg")], recursive=True))
    assert found == ["a.jpg", "other/a.jpg"]  # equal stems stay apart
    with pytest.raises(BadInputError, match="matches no file"):
        list(find_images([str(tree / "*.tiff")]))


def test_find_named_files_whatever_their_suffix(tree: Path) -> None:
    found = list(find_images([tree / "readme.txt", tree / "sub" / "c.webp"]))
    assert rels(found) == ["readme.txt", "c.webp"]  # a named file is tried, and fails clearly
    with pytest.raises(BadInputError, match="no such file or folder"):
        list(find_images([tree / "missing.png"]))


def test_find_yields_each_file_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    found = list(find_images(["in", "in/b.png", "./in/b.png", str(tree / "b.png"), "in/*.png"]))
    assert rels(found) == ["a.jpg", "b.png"]
    (tree / "link.png").symlink_to(tree / "b.png")  # a link is an input of its own
    assert rels(find_images([tree])) == ["a.jpg", "b.png", "link.png"]


def test_find_checks_every_argument_before_yielding(tree: Path) -> None:
    with pytest.raises(BadInputError, match=r"typo\.png: no such file or folder"):
        find_images([tree, tree / "typo.png"])  # raised at the call, not half way through
    with pytest.raises(BadInputError, match="matches no file"):
        find_images([tree, str(tree / "*.nothing")])


def test_find_reports_a_folder_it_cannot_list_and_goes_on(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    found = list(find_images([tree], recursive=True))
    assert rels(found) == ["a.jpg", "b.png", "other/a.jpg", "sub"]
    (locked,) = [s for s in found if s.error]
    assert locked.rel == Path("sub") and "cannot list the folder (Permission denied)" in locked.error


def test_find_yields_broken_symlinks_so_they_are_reported(tree: Path) -> None:
    (tree / "dead.png").symlink_to(tree / "nowhere.png")
    assert "dead.png" in rels(find_images([tree]))


def test_find_survives_symlink_loops(tree: Path) -> None:
    (tree / "sub" / "up").symlink_to(tree)  # sub/up -> in: a cycle
    (tree / "sub" / "self").symlink_to(tree / "sub" / "self")  # a link to itself
    (tree / "loop.png").symlink_to(tree / "loop.png")  # a looping "image"
    found = rels(itertools.islice(find_images([tree], recursive=True), 1000))
    assert len(found) < 1000, "the walk went round a loop"
    assert len(found) == len(set(found))
    assert {"a.jpg", "b.png", "sub/c.webp", "sub/deeper/d.bmp", "loop.png"} <= set(found)


def test_find_follows_a_linked_folder_once(tree: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (2, 2)).save(elsewhere / "e.png")
    (tree / "link").symlink_to(elsewhere)
    (tree / "link2").symlink_to(elsewhere)
    found = rels(find_images([tree], recursive=True))
    assert found.count("link/e.png") + found.count("link2/e.png") == 1


# -- model input and output scaling ------------------------------------------------------


def _info(scale: float, offset: float, size: tuple[int, int] = (4, 6)) -> ModelInfo:
    return ModelInfo(
        task="segment",
        arch="t",
        image_size=size,
        pixel_scale=scale,
        pixel_offset=offset,
        class_names=("a", "b"),
        palette=((0, 0, 0), (255, 255, 255)),
    )


@pytest.mark.parametrize(
    ("scale", "offset", "lo", "hi"), [(1 / 255, 0.0, 0.0, 1.0), (1 / 127.5, -1.0, -1.0, 1.0)]
)
def test_preprocess_range_and_shape(scale: float, offset: float, lo: float, hi: float) -> None:
    image = np.zeros((9, 11, 3), np.uint8)
    image[0, 0] = 255
    image[-1, -1] = 255
    values = preprocess(image, _info(scale, offset, (9, 11)))
    assert values.shape == (9, 11, 3) and values.dtype == np.float32
    assert values.min() == pytest.approx(lo) and values.max() == pytest.approx(hi)
    assert preprocess(image, _info(scale, offset)).shape == (4, 6, 3)  # resized to the model size


def test_to_pixels_inverts_preprocess_and_clips() -> None:
    info = _info(1 / 127.5, -1.0)
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    assert np.array_equal(to_pixels(preprocess(image, info), info), image)
    wild = np.array([-5.0, -1.0, 0.0, 1.0, 7.0], np.float32)
    assert to_pixels(wild, info).tolist() == [0, 0, 127, 255, 255]  # 0.0 -> 127.49999 in float32


# -- atomic writes -----------------------------------------------------------------------


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "out" / "mask.png"

    def half_then_fail(fh: io.BufferedWriter) -> None:
        fh.write(b"\x89PNG half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda fh: (fh.write(b"new"), (_ for _ in ()).throw(KeyboardInterrupt)))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_atomic_write_where_it_cannot_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(
        WriteError, match=r"afile/m\.png: cannot write: a file stands where a folder"
    ) as caught:
        save_image(tmp_path / "afile" / "m.png", np.zeros((2, 2), np.uint8))
    assert isinstance(caught.value, OSError) and isinstance(caught.value, SegenError)

    def disk_full(fh: io.BufferedWriter) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"m\.png: cannot write \(No space left on device\)"):
        atomic_write(tmp_path / "m.png", disk_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_save_image_writes_whole_pngs(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    save_image(tmp_path / "g.png", grey)
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "L" and np.array_equal(np.asarray(img), grey[:, :, 0])
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_atomic_write_makes_folders_survives_a_stale_temp_and_honours_umask(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "m.png"
    save_image(target, np.zeros((2, 2), np.uint8))  # missing folders are made
    stale = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.part")
    stale.write_bytes(b"left by a killed process whose pid came back")
    save_image(target, np.full((2, 2), 7, np.uint8))
    with Image.open(target) as img:
        assert np.asarray(img).max() == 7
    assert stale.read_bytes().startswith(b"left")  # not ours: untouched
    old = os.umask(0o022)
    try:
        save_image(tmp_path / "shared.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "shared.png").stat().st_mode & 0o777 == 0o644  # like any file the user makes
