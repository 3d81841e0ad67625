"""The fast decoders of datasets.image_io: the same pixels as PIL's policy, reduced-size JPEG decoding
that keeps boxes exact, and the routes (OpenCV for 8-bit RGB/grey JPEG and PNG, PIL for the rest)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from datasets import image_io
from datasets.dataset import DetectionDataset
from datasets.loaders import load_resized
from datasets.image_io import ImageError, load_image, reduce_factor, reduced_hw
from datasets.loaders import PilLoader
from datasets.records import Record
from datasets.transforms import resize_long_side, resized_hw
from tests.datasets.synth import image_with_rect

BCCD = Path(__file__).resolve().parents[2] / "data" / "BCCD" / "JPEGImages"


def pil_reference(path) -> np.ndarray:
    """The policy as PIL alone implements it (the loader before the fast route)."""
    with Image.open(path) as img:
        img.load()
        up = ImageOps.exif_transpose(img)
        if up.mode.startswith("I;16") or up.mode in ("I", "F"):
            a = np.round(np.clip(np.asarray(up, np.float64), 0, 65535) / 257.0).astype(np.uint8)
            return np.repeat(a[:, :, None], 3, axis=2)
        if up.mode == "P" and "transparency" in up.info:
            up = up.convert("RGBA")
        return np.asarray(up.convert("RGB"), np.uint8)


@pytest.fixture
def decoders(monkeypatch):
    """Counts of OpenCV decodes and PIL full decodes."""
    counts = {"cv2": 0, "pil": 0}
    real_imdecode, real_open = image_io.cv2.imdecode, image_io._open_checked

    def imdecode(*a, **k):
        counts["cv2"] += 1
        return real_imdecode(*a, **k)

    def open_checked(*a, **k):
        counts["pil"] += 1
        return real_open(*a, **k)

    monkeypatch.setattr(image_io.cv2, "imdecode", imdecode)
    monkeypatch.setattr(image_io, "_open_checked", open_checked)
    return counts


def test_bccd_images_decode_pixel_for_pixel_like_pil(decoders):
    files = sorted(BCCD.glob("*.jpg"))
    assert len(files) == 364
    for f in files[::4]:
        np.testing.assert_array_equal(load_image(f), pil_reference(f), err_msg=str(f))
    assert decoders == {"cv2": len(files[::4]), "pil": 0}  # every one through OpenCV: same IDCT, same pixels


# (file suffix, PIL mode saved, PIL save options, expected route)
CASES = [
    ("jpg", "RGB", {"quality": 90}, "cv2"),
    ("jpg", "L", {"quality": 90}, "cv2"),
    ("jpg", "RGB", {"quality": 90, "progressive": True}, "cv2"),
    ("jpg", "RGB", {"quality": 90, "subsampling": 0}, "cv2"),  # 4:4:4
    ("jpg", "CMYK", {"quality": 90}, "pil"),
    ("png", "RGB", {}, "cv2"),
    ("png", "L", {}, "cv2"),
    ("png", "RGBA", {}, "pil"),
    ("png", "LA", {}, "pil"),
    ("png", "P", {}, "pil"),
    ("png", "1", {}, "pil"),
    ("bmp", "RGB", {}, "pil"),
    ("webp", "RGB", {"lossless": True}, "pil"),
]


@pytest.mark.parametrize("suffix,mode,options,route", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_modes_take_their_route_and_equal_pil(tmp_path, decoders, suffix, mode, options, route):
    rng = np.random.default_rng(3)
    img = (image_with_rect((37, 53)).astype(np.int16) + rng.integers(-40, 40, (37, 53, 3))).clip(0, 255).astype(np.uint8)
    p = tmp_path / f"x.{suffix}"
    Image.fromarray(img).convert(mode).save(p, **options)
    np.testing.assert_array_equal(load_image(p), pil_reference(p))
    assert decoders[route] == 1 and decoders["cv2" if route == "pil" else "pil"] == 0


def test_png_with_a_transparency_key_and_16_bit_go_through_pil(tmp_path, decoders):
    img = image_with_rect((20, 30))
    Image.fromarray(img).save(tmp_path / "t.png", transparency=(255, 0, 0))  # tRNS chunk on an RGB PNG
    Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(tmp_path / "g16.png")
    for name in ("t.png", "g16.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name), pil_reference(tmp_path / name))
    assert decoders == {"cv2": 0, "pil": 2}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_equal_pil(tmp_path, decoders, orientation):
    stored = image_with_rect((40, 64), box=(3, 5, 20, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    out = load_image(p)
    assert out.shape == ((64, 40, 3) if orientation >= 5 else (40, 64, 3))
    np.testing.assert_array_equal(out, pil_reference(p))
    assert decoders["cv2"] == 1


def test_truncated_and_corrupt_files_name_the_file(tmp_path, decoders):
    good = tmp_path / "good.jpg"
    Image.fromarray(image_with_rect((64, 64))).save(good, quality=90)
    data = good.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])  # no end-of-image marker: PIL decides, and refuses
    with pytest.raises(ImageError, match=r"cut\.jpg: corrupt/truncated image"):
        load_image(cut)
    assert decoders["cv2"] == 0
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"zero\.jpg: zero-byte image file"):
        load_image(tmp_path / "zero.jpg")
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"text\.jpg: not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match=r"missing\.jpg: cannot read image file"):
        load_image(tmp_path / "missing.jpg")


def test_decompression_bomb_guard_still_applies(tmp_path, monkeypatch):
    p = tmp_path / "big.jpg"
    Image.fromarray(image_with_rect((100, 100))).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 4)  # over twice the limit: refused
    with pytest.raises(ImageError, match=r"big\.jpg: decompression bomb refused by PIL"):
        load_image(p)


# -- reduced-size decoding ------------------------------------------------------------------------
def test_reduce_factor_is_the_largest_that_covers():
    assert reduced_hw((1080, 1920), 2) == (540, 960) and reduced_hw((1079, 1917), 4) == (270, 480)
    assert reduce_factor((1080, 1920), (360, 640)) == 2  # 540x960 covers 360x640, 270x480 does not
    assert reduce_factor((1080, 1920), (135, 240)) == 8
    assert reduce_factor((1080, 1920), (136, 240)) == 4  # 135 < 136
    assert reduce_factor((480, 640), (480, 640)) == 1 and reduce_factor((480, 640), None) == 1


def _large_jpeg(path: Path, hw=(1080, 1920), orientation: int = 1) -> np.ndarray:
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([np.sin(x / 97), np.cos(y / 61), np.sin((x + y) / 143)], 2) * 90 + 128
    img = img.clip(0, 255).astype(np.uint8)
    img[200:400, 300:700] = (230, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(path, quality=92, exif=exif)
    return img


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_covers_the_target_and_is_close_to_a_full_decode(tmp_path, decoders, orientation):
    p = tmp_path / "large.jpg"
    _large_jpeg(p, orientation=orientation)
    full = load_image(p)
    upright_hw = full.shape[:2]
    target = resized_hw(upright_hw, 640)
    small = load_image(p, at_least=target)
    assert small.shape[:2] == reduced_hw(upright_hw, 2)  # 1/2: 540x960 (or 960x540 upright)
    a = resize_long_side(full, 640).astype(np.int16)
    b = cv2.resize(small, target[::-1], interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(a - b).mean() < 1.0 and np.abs(a - b).max() <= 40  # IDCT scaling vs area filter: not bit-exact
    assert load_image(p, at_least=upright_hw).shape == full.shape  # nothing smaller covers the full size


class FullOnly:
    """A loader without load_scaled (like a user's own): always the full decode."""

    def load(self, path):
        return load_image(path)

    def hw(self, path):
        return image_io.image_hw(path)


def test_boxes_after_a_reduced_decode_equal_boxes_after_a_full_decode(tmp_path):
    p = tmp_path / "large.jpg"
    _large_jpeg(p)
    box = np.array([[300, 200, 700, 400]], np.float32)
    rec = Record(image_id=0, file=str(p), img_hw=(1080, 1920), boxes=box, labels=np.zeros(1, np.int64))
    out = {}
    for name, loader in (("scaled", PilLoader()), ("full", FullOnly())):
        ds = DetectionDataset([rec], ["a"], 640, train=True, loader=loader)
        out[name] = ds._load_resized(0, np.random.default_rng(0))
    (_, img1, boxes1, _), (_, img2, boxes2, _) = out["scaled"], out["full"]
    assert img1.shape == img2.shape == (360, 640, 3)
    np.testing.assert_array_equal(boxes1, boxes2)
    np.testing.assert_allclose(boxes1, box / 3, rtol=1e-6)  # 1920 -> 640: a third (float32 scale factors)
    # the red box lands on the same pixels in both
    red1, red2 = (np.all(im == (230, 30, 30), axis=2) | (np.abs(im.astype(int) - (230, 30, 30)).sum(2) < 30)
                  for im in (img1, img2))
    assert red1[70:130, 105:230].mean() > 0.95 and red2[70:130, 105:230].mean() > 0.95


def test_load_resized_refuses_a_file_that_changed_size(tmp_path):
    p = tmp_path / "large.jpg"
    _large_jpeg(p, hw=(1000, 1920))
    with pytest.raises(ImageError, match=r"large\.jpg: size \(500, 960\) differs from the scanned \(1080, 1920\)"):
        load_resized(PilLoader(), str(p), (1080, 1920), 640)
    with pytest.raises(ImageError, match=r"differs from the scanned"):
        load_resized(FullOnly(), str(p), (1080, 1920), 640)


def test_odd_sizes_get_the_full_decode_size_not_the_reduced_ones_rounding(tmp_path):
    """705x1917 at 640: a full decode resizes to 235x640; its half-size decode (353x959) would round to
    236x640. The reduced image is resized to the full decode's size, so boxes scale the same."""
    p = tmp_path / "odd.jpg"
    _large_jpeg(p, hw=(705, 1917))
    assert load_image(p, at_least=(235, 640)).shape[:2] == (353, 959)
    assert resize_long_side(np.zeros((353, 959, 3), np.uint8), 640).shape[:2] == (236, 640)
    assert load_resized(PilLoader(), str(p), (705, 1917), 640).shape == (235, 640, 3)


def test_a_resized_image_cache_holds_the_uncached_pipelines_pixels(tmp_path):
    """Large JPEGs decoded at 1/8 for a 128 px input: the ram cache (resized) is built through the same
    load_resized, so cached training items equal uncached ones."""
    import torch

    from core.loaders import build_train_loader
    from tests.datasets.synth import add_item, make_cfg, voc_objects_for, write_set
    from utils.dist import DistInfo
    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(4):
        y, x = np.mgrid[0:720, 0:1280]
        img = (np.stack([np.sin(x / (40 + k)), np.cos(y / 30), np.sin((x + y) / 90)], 2) * 90 + 128
               + rng.normal(0, 8, (720, 1280, 3))).clip(0, 255).astype(np.uint8)
        box = (100 + 40 * k, 80, 600, 500)
        add_item(root, f"big{k}", img, voc_objects_for(box, "cat"))
    write_set(root, "train", [f"big{k}" for k in range(4)])
    write_set(root, "val", ["big0"])
    items = {}
    for mode in ("none", "ram"):
        cfg = make_cfg(root, img_size=128, cache_images=mode, cache_dir=str(tmp_path / "cache"), num_workers=0)
        cfg.train.batch_size, cfg.aug.mosaic_prob = 2, 0.5
        ds = build_train_loader(cfg, DistInfo.single())[0].dataset
        assert load_image(ds.records[0].file, at_least=(72, 128)).shape == (90, 160, 3)  # 1/8
        ds.set_epoch(0)
        items[mode] = [ds[i] for i in range(4)]
    for a, b in zip(items["none"], items["ram"]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
