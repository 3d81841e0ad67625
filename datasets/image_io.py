"""Image decoding with one documented policy for every split and task.

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
import os
from pathlib import Path

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


def load_image(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB in the upright (EXIF-applied) frame.

    Args:
        path: file path; non-ASCII characters and spaces are fine.
        data: the file's content when it was read (and decrypted) elsewhere; ``path`` then
            only names the image in errors.
    Raises:
        ImageError: zero-byte, non-image, truncated or decompression-bomb files.
    """
    img = _open_checked(path, data)
    try:
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 (unreadable EXIF: keep the stored orientation)
            upright = img
        return _to_rgb_uint8(upright)
    finally:
        img.close()
