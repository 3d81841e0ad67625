"""Image decoding with one documented policy for every split and task.

Decoding: PIL reads the header (format, mode, size, EXIF orientation, its decompression-bomb guard)
and OpenCV's ``imdecode`` decodes 8-bit RGB and grey JPEG and PNG files (``load_image`` 1.0 ms for a
640x480 BCCD JPEG against 5.9 ms for the PIL-only path before, PIL's bare decode 1.2 ms;
``benchmarks/dataloader.py`` times them), pixel for pixel the same as PIL (both use
libjpeg-turbo's default IDCT and upsampling; PNG is lossless); every other file, mode or an
incomplete one goes through PIL. A JPEG that the caller will shrink anyway may be decoded at 1/2,
1/4 or 1/8 of its size (libjpeg's DCT scaling, ``at_least``), when that still covers the size
asked for.

Policy:
- EXIF orientation is applied (``ImageOps.exif_transpose``): annotations (VOC, COCO) are
  taken to be in the upright frame a viewer shows, so boxes and pixels always agree.
- Every mode becomes 3-channel uint8 RGB: grayscale is replicated, alpha is dropped (not
  composited, so an RGBA file predicts exactly like its RGB copy), CMYK/palette/YCbCr are
  converted by PIL, 16-bit ('I;16*', 'I') is scaled from 0..65535 to 0..255.
- Any decode problem (zero-byte file, not an image, truncated data, PIL's decompression-bomb
  guard) raises ``ImageError`` naming the path and the reason. PIL's guard
  (``Image.MAX_IMAGE_PIXELS``) and ``LOAD_TRUNCATED_IMAGES`` are never changed here.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 swap height and width when applied.
_ORIENTATION_TAG = 0x0112
_SWAPS_HW = {5, 6, 7, 8}


class ImageError(ValueError):
    """An image file cannot be decoded; the message names the path and the reason."""


def _open_checked(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """Open and fully decode ``path`` (or ``data``, the decrypted bytes of ``path``); translate
    every failure into ImageError naming ``path``."""
    p = Path(path)
    if data is None:
        try:
            size = p.stat().st_size
        except OSError as e:
            raise ImageError(f"{p}: cannot read image file ({e.strerror or e})") from e
    else:
        size = len(data)
    if size == 0:
        raise ImageError(f"{p}: zero-byte image file")
    try:
        img = Image.open(p if data is None else io.BytesIO(data))
        img.load()  # full decode now, so a truncated file fails here and not mid-training
        return img
    except Image.DecompressionBombError as e:
        raise ImageError(f"{p}: decompression bomb refused by PIL ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{p}: not an image (unidentified format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{p}: corrupt/truncated image ({e})") from e


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 (a broken EXIF block must not reject an otherwise good image)
        return 1


def image_hw(path: str | os.PathLike, data: bytes | None = None) -> tuple[int, int]:
    """Decode-check ``path`` (or its bytes ``data``) and return the upright (EXIF-applied)
    ``(h, w)`` in pixels.

    Raises ImageError like ``load_image``; cheaper because no pixels are converted.
    """
    img = _open_checked(path, data)
    try:
        w, h = img.size
        return (w, h) if _exif_orientation(img) in _SWAPS_HW else (h, w)
    finally:
        img.close()


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> [H, W, 3] uint8 RGB (see the module policy)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit (and 32-bit int/float holding 16-bit data): map 0..65535 onto 0..255.
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a, 0, 65535) / 257.0
        g = np.round(a).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL asks for this route for palette transparency
    if img.mode != "RGB":
        img = img.convert("RGB")  # drops alpha, expands L/LA/1/CMYK/YCbCr/P
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to a decoded [H, W, 3] array as ``ImageOps.exif_transpose``
    does (2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    8 rotate 90 counter-clockwise)."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(img)) if op else img


_REDUCE_FLAGS = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # the size bits only: colour comes from IMREAD_COLOR_RGB
_JPEG_END, _PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"


def reduced_hw(img_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """(h, w) of an ``img_hw`` image decoded at 1/factor of its size (libjpeg rounds up)."""
    return math.ceil(img_hw[0] / factor), math.ceil(img_hw[1] / factor)


def reduce_factor(img_hw: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """The largest of 1, 2, 4, 8 whose reduced size still covers ``at_least`` (both sides)."""
    if at_least is None:
        return 1
    return max(k for k in _REDUCE_FLAGS
               if k == 1 or all(r >= t for r, t in zip(reduced_hw(img_hw, k), at_least)))


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read image file ({e.strerror or e})") from e


def _fast_decode(p: Path, data: bytes, at_least: tuple[int, int] | None) -> np.ndarray | None:
    """OpenCV's decode of an 8-bit RGB/grey JPEG or PNG, upright, or None where PIL must decide."""
    try:
        header = Image.open(io.BytesIO(data))  # header only; the bomb guard runs here
    except Image.DecompressionBombError as e:
        raise ImageError(f"{p}: decompression bomb refused by PIL ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{p}: not an image (unidentified format)") from e
    except (OSError, SyntaxError, ValueError):
        return None  # PIL's full open names the problem
    with header:
        fmt, mode, (w, h) = header.format, header.mode, header.size
        raw = header.tile[0][3] if len(header.tile) == 1 else None
        raw = raw[0] if isinstance(raw, tuple) else raw
        if fmt == "JPEG":
            fits = mode in ("RGB", "L") and data.rstrip(b"\0").endswith(_JPEG_END)
        elif fmt == "PNG":  # 8-bit, no transparency key (PIL's convert ignores it; libpng would not)
            fits = (mode in ("RGB", "L") and raw == mode and "transparency" not in header.info
                    and data.endswith(_PNG_END))
        else:
            fits = False
        if not fits:
            return None
        orientation = _exif_orientation(header)
    stored_at_least = None
    if at_least is not None and fmt == "JPEG":  # at_least is upright; the stored frame may be transposed
        stored_at_least = at_least[::-1] if orientation in _SWAPS_HW else at_least
    k = reduce_factor((h, w), stored_at_least)
    img = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | _REDUCE_FLAGS[k])
    if img is None or img.shape[:2] != reduced_hw((h, w), k):
        return None
    return upright(img, orientation)


def load_image(path: str | os.PathLike, data: bytes | None = None,
               at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB in the upright (EXIF-applied) frame.

    Args:
        path: file path; non-ASCII characters and spaces are fine.
        data: the file's content when it was read (and decrypted) elsewhere; ``path`` then
            only names the image in errors.
        at_least: upright (h, w) the caller resizes the image to next; a JPEG may then come back
            decoded at 1/k of its size, k in 2, 4, 8 (``reduced_hw(upright hw, k)``), when that
            still covers ``at_least``. None: the full size.
    Raises:
        ImageError: zero-byte, non-image, truncated or decompression-bomb files.
    """
    p = Path(path)
    raw = _read_bytes(p) if data is None else data
    if len(raw) == 0:
        raise ImageError(f"{p}: zero-byte image file")
    fast = _fast_decode(p, raw, at_least)
    if fast is not None:
        return fast
    img = _open_checked(path, raw)
    try:
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 (unreadable EXIF: keep the stored orientation)
            upright = img
        return _to_rgb_uint8(upright)
    finally:
        img.close()
