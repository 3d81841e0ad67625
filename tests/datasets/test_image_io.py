"""load_image / image_hw: every mode to RGB uint8, EXIF applied, bad files -> ImageError."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets.image_io import ImageError, image_hw, load_image
from tests.datasets.synth import RED, image_with_rect


def test_rgb_round_trip_and_non_ascii_path(tmp_path):
    img = image_with_rect((30, 40))
    p = tmp_path / "测试 dir" / "测试 image.png"
    p.parent.mkdir()
    Image.fromarray(img).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, img)
    assert image_hw(p) == (30, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "1"])
def test_modes_become_rgb_uint8(tmp_path, mode):
    img = image_with_rect((20, 24))
    p = tmp_path / f"m_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.fromarray(img).convert(mode).save(p)
    out = load_image(p)
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    if mode == "RGBA":  # alpha dropped, not composited: identical to the RGB copy
        np.testing.assert_array_equal(out, img)
    if mode in ("L", "LA"):
        assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_rgba_with_transparent_pixels_equals_rgb(tmp_path):
    img = image_with_rect((16, 16))
    alpha = np.zeros((16, 16, 1), np.uint8)  # fully transparent
    Image.fromarray(np.concatenate([img, alpha], 2), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), img)


def test_16bit_scaled_to_8bit(tmp_path):
    a16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a16).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])


def test_exif_orientation_6_is_applied(tmp_path):
    upright = image_with_rect((40, 60), box=(5, 5, 20, 15))  # red block near the top-left
    stored = np.rot90(upright, k=1).copy()  # what a camera with orientation 6 stores
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    assert image_hw(p) == (40, 60)
    out = load_image(p)
    assert out.shape == (40, 60, 3)
    assert out[7:13, 7:18, 0].mean() > 180 and out[7:13, 7:18, 1].mean() < 80
    assert out[30:, 40:, 0].mean() < 100  # background elsewhere


def _write_png_header(path, w, h):
    """A PNG whose IHDR declares w x h (no pixel data needed to trip the size guard)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind,reason", [
    ("zero", "zero-byte"), ("text", "not an image"), ("truncated", "corrupt/truncated"),
    ("bomb", "decompression bomb"), ("missing", "cannot read"),
])
def test_bad_files_raise_image_error(tmp_path, kind, reason):
    p = tmp_path / "bad img.jpg"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a jpeg")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "bomb":
        _write_png_header(p, 100_000, 100_000)
    for fn in (load_image, image_hw):
        with pytest.raises(ImageError) as ei:
            fn(p)
        assert str(p) in str(ei.value) and reason in str(ei.value)
    assert Image.MAX_IMAGE_PIXELS is not None  # the PIL guard stays on


def test_red_constant_matches():
    # guard for the synthetic helpers the other tests rely on
    assert image_with_rect()[15, 25].tolist() == list(RED)
