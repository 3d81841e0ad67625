"""Pluggable image loaders, chosen by import path in ``data.image_loader``.

A loader class is built as ``cls(data_cfg)`` and offers

- ``load(path) -> [H, W, 3] uint8 RGB`` in the upright (EXIF-applied) frame, and
- ``hw(path) -> (h, w)``: a full decode check used once per image by the dataset scan,

both raising ``ImageError`` naming the file. Every loader follows the decoding policy of
``datasets.image_io`` (modes, 16-bit, alpha, EXIF), so changing the loader never moves a box.
A loader may also offer ``load_scaled(path, at_least)``: the image, possibly decoded at 1/k of its
size (k in 1, 2, 4, 8, ``image_io.reduced_hw``) while still covering ``at_least`` = (h, w); the
training pipeline uses it for images it shrinks anyway (``load_resized`` below).

Built in: ``PilLoader`` (default; the decoders of ``datasets.image_io``: OpenCV for 8-bit
JPEG/PNG, PIL for the rest), ``TurboJpegLoader`` (libjpeg-turbo through PyTurboJPEG, for
JPEG files; other files go through PIL) and ``EncryptedLoader`` (``.enc`` files, AES-GCM with
the key of ``data.key_env``; plain files are read as usual).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from configs.base_config import ConfigError
from datasets.crypto import Cipher, CryptoError, image_aad
from datasets.image_io import ImageError, image_hw, load_image, reduced_hw, upright
from datasets.paths import ENC_SUFFIX
from datasets.transforms import resize_long_side, resized_hw

DEFAULT_LOADER = "datasets.loaders.PilLoader"
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_ORIENTATION_TAG = 0x0112


class ImageLoader(Protocol):
    def load(self, path: str | os.PathLike) -> np.ndarray: ...

    def hw(self, path: str | os.PathLike) -> tuple[int, int]: ...


class PilLoader:
    """The decoding of ``datasets.image_io`` (OpenCV for 8-bit JPEG/PNG, PIL for every other file;
    the name is kept for the configs that give it)."""

    def __init__(self, data_cfg: Any = None) -> None:
        del data_cfg  # nothing to configure

    def load(self, path: str | os.PathLike) -> np.ndarray:
        return load_image(path)

    def load_scaled(self, path: str | os.PathLike, at_least: tuple[int, int]) -> np.ndarray:
        return load_image(path, at_least=at_least)

    def hw(self, path: str | os.PathLike) -> tuple[int, int]:
        return image_hw(path)


class TurboJpegLoader:
    """libjpeg-turbo decoding of JPEG files (PyTurboJPEG); PIL for every other file or mode."""

    def __init__(self, data_cfg: Any = None) -> None:
        del data_cfg
        try:
            from turbojpeg import TJPF_RGB, TurboJPEG
            self._jpeg, self._rgb = TurboJPEG(), TJPF_RGB
        except (ImportError, RuntimeError, OSError) as e:
            raise ConfigError(f"data.image_loader=datasets.loaders.TurboJpegLoader needs the PyTurboJPEG "
                              f"package and the libturbojpeg library ({e}); pip install PyTurboJPEG, or "
                              f"use {DEFAULT_LOADER}") from None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        p = Path(path)
        if p.suffix.lower() not in _JPEG_SUFFIXES:
            return load_image(p)
        try:
            data = p.read_bytes()
            img = self._jpeg.decode(data, pixel_format=self._rgb)
        except (OSError, ValueError, RuntimeError):
            return load_image(p)  # CMYK, truncated, unreadable ...: PIL decides and names the problem
        with Image.open(p) as header:  # reads the header only: the EXIF orientation
            orientation = int(header.getexif().get(_ORIENTATION_TAG, 1))
        return upright(np.ascontiguousarray(img), orientation)

    def hw(self, path: str | os.PathLike) -> tuple[int, int]:
        return image_hw(path)


class EncryptedLoader:
    """``<name>.enc`` files hold an image encrypted by ``datasets.crypto``; others are read as is."""

    def __init__(self, data_cfg: Any) -> None:
        try:
            self.cipher = Cipher.from_env(data_cfg.key_env)
        except CryptoError as e:
            raise ConfigError(f"data.image_loader=datasets.loaders.EncryptedLoader: {e}") from None

    def _plain(self, path: str | os.PathLike) -> bytes | None:
        p = Path(path)
        if not p.name.lower().endswith(ENC_SUFFIX):
            return None
        try:
            blob = p.read_bytes()
        except OSError as e:
            raise ImageError(f"{p}: cannot read image file ({e.strerror or e})") from e
        plain_name = p.name[:-len(ENC_SUFFIX)]
        try:
            return self.cipher.decrypt(blob, "the image", image_aad(plain_name))
        except CryptoError as e:
            if _decrypts_unbound(self.cipher, blob):
                raise ImageError(f"{p}: encrypted without binding to its file name (an older version of "
                                 "python -m datasets.crypto); encrypt the plain images again") from None
            raise ImageError(f"{p}: {e} (an encrypted image decrypts only under the name it was encrypted "
                             "with)") from None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        return load_image(path, self._plain(path))

    def load_scaled(self, path: str | os.PathLike, at_least: tuple[int, int]) -> np.ndarray:
        return load_image(path, self._plain(path), at_least)

    def hw(self, path: str | os.PathLike) -> tuple[int, int]:
        return image_hw(path, self._plain(path))


# The built-in loaders, by the name a config gives. A config read from a checkpoint or an exported
# model is data, not code: it may only name one of these (core.tasks checks it); a config file
# (code the user runs) may also give the import path of a loader of its own.
LOADERS: dict[str, type] = {
    DEFAULT_LOADER: PilLoader,
    "datasets.loaders.TurboJpegLoader": TurboJpegLoader,
    "datasets.loaders.EncryptedLoader": EncryptedLoader,
}


def _decrypts_unbound(cipher: Cipher, blob: bytes) -> bool:
    try:
        cipher.decrypt(blob, "the image")
    except CryptoError:
        return False
    return True


def build_loader(data_cfg: Any) -> ImageLoader:
    """Instantiate ``data_cfg.image_loader``: a name of ``LOADERS``, or the import path of another
    loader class ("package.module.Class" or "package.module:Class")."""
    spec = data_cfg.image_loader or DEFAULT_LOADER
    if spec in LOADERS:
        return LOADERS[spec](data_cfg)
    module_name, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise ConfigError(f"data.image_loader={spec!r} must be an import path like {DEFAULT_LOADER!r}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"data.image_loader={spec!r} cannot be imported ({e}); built in: "
                          f"{DEFAULT_LOADER}, datasets.loaders.TurboJpegLoader, "
                          "datasets.loaders.EncryptedLoader") from None
    loader = cls(data_cfg)
    if not callable(getattr(loader, "load", None)) or not callable(getattr(loader, "hw", None)):
        raise ConfigError(f"data.image_loader={spec!r} must offer load(path) and hw(path)")
    return loader


def load_resized(loader: ImageLoader, file: str, img_hw: tuple[int, int], size: int) -> np.ndarray:
    """Decode ``file`` (scanned upright size ``img_hw``) and resize it so its long side is ``size``
    (``resized_hw``); a loader with ``load_scaled`` may decode a large JPEG at 1/2, 1/4 or 1/8 of its
    size first (the result has the same size, so boxes scale exactly as after a full decode).

    Raises ImageError when the decoded size is not the scanned one (the file changed after the scan).
    """
    target = resized_hw(img_hw, size)
    scaled = getattr(loader, "load_scaled", None)
    img = scaled(file, target) if scaled is not None and target[0] * 2 <= img_hw[0] else loader.load(file)
    hw = tuple(img.shape[:2])
    if hw == tuple(img_hw):
        return resize_long_side(img, size)
    if hw not in {reduced_hw(img_hw, k) for k in (2, 4, 8)}:
        raise ImageError(f"{file}: size {hw} differs from the scanned {tuple(img_hw)} (file changed after the scan?)")
    return cv2.resize(img, target[::-1], interpolation=cv2.INTER_AREA)  # reduced covers target: shrink or equal
