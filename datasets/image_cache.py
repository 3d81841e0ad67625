"""Decoded-image cache in one LMDB file, shared by all DataLoader workers.

``data.cache_images``:

- ``"disk"``: the LMDB file is memory-mapped by each process on first use; the OS page cache
  shares the pages between workers.
- ``"ram"``: every value is copied once into one shared-memory buffer before the workers
  start; workers read it without copies or system calls.

Both modes use the same file, so a cache built for one is reused by the other. Values are raw
``[h, w, 3]`` uint8 RGB pixels (decoding is the cost being saved), optionally resized so the
long side is ``img_size`` (``data.cache_resize``; decoded and resized exactly as the uncached
training pipeline does, ``loaders.load_resized``, no padding; unresized, a JPEG of more than twice
the input side trains from its full decode instead of the reduced-size one, a marginally different shrink) and optionally AES-GCM encrypted (``data.encrypt_cache``; each value bound to its
slot). The cache is rebuilt, in parallel with a progress bar, when ``data.cache_refresh`` is
set or when the images, their sizes or mtimes, the resize or the encryption differ from the
ones it was built with; the log says why.
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from datasets.crypto import Cipher, CryptoError
from datasets.file_stats import FileStats
from datasets.image_io import ImageError
from datasets.label_cache import (
    cipher_for,
    file_identity,
    locked,
    refresh_wanted,
    settings_change,
)
from datasets.loaders import load_resized
from datasets.records import RecordTable
from datasets.scan import DatasetError

IMAGE_CACHE_VERSION = 3  # 3: resized entries decoded as the uncached pipeline (a large JPEG at 1/2..1/8 first);
# 2: file stats and shapes as arrays (1 held one JSON entry per image)
_META = b"__meta__"  # JSON: settings, resize, key check
_ARRAYS = b"__arrays__"  # npz: file stats and stored (h, w) per image, no Python object per image
_CHECK = b"image cache key check"
_CHUNK = 64  # images decoded per write transaction
_RAM_FRACTION = 0.8  # ram mode only when the cache fits in this fraction of the available memory


def _key(index: int) -> bytes:
    return b"%09d" % index


# LMDB allows one environment per file and process, and one must not cross a fork. So every
# process keeps one read-only environment per cache file here, closed before any fork (the
# parent and the forked DataLoader workers each reopen lazily).
_ENVS: dict[str, tuple[int, int, lmdb.Environment]] = {}  # path -> (pid, inode, environment)


def _env_for(path: Path) -> tuple[lmdb.Environment, int]:
    """This process's read-only environment of ``path`` and the inode it reads."""
    key, ino, pid = str(path), os.stat(path).st_ino, os.getpid()
    got = _ENVS.get(key)
    if got is not None and got[0] == pid and got[1] == ino:
        return got[2], ino
    if got is not None and got[0] == pid:
        got[2].close()  # the file was rebuilt: the old environment reads a deleted file
    env = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
    _ENVS[key] = (pid, ino, env)
    return env, ino


def _close_envs_before_fork() -> None:
    for pid, _, env in _ENVS.values():
        if pid == os.getpid():
            env.close()
    _ENVS.clear()


os.register_at_fork(before=_close_envs_before_fork)


def stored_hw(img_hw: tuple[int, int], resize: int) -> tuple[int, int]:
    """(h, w) of an image of ``img_hw`` in a cache resized to ``resize`` (0 = not resized)."""
    if not resize:
        return tuple(img_hw)
    h, w = img_hw
    scale = resize / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _stored_shapes(img_hw: np.ndarray, resize: int) -> np.ndarray:
    """[n, 2] int64 stored (h, w) of images of ``img_hw`` [n, 2] (``stored_hw`` of each)."""
    return np.array([stored_hw((int(h), int(w)), resize) for h, w in img_hw], np.int64).reshape(-1, 2)


def _pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack_arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _read(path: Path, key: bytes, ino: int | None = None) -> bytes | None:
    env, got = _env_for(path)
    if ino is not None and got != ino:
        raise DatasetError(f"image cache {path} was rebuilt while this loader used it; build the loader "
                           "again")
    with env.begin(buffers=False) as txn:
        return txn.get(key)


class ImageCache:
    """Read access to a built cache: ``get(index)`` -> [h, w, 3] uint8 (read-only) or None."""

    def __init__(self, path: Path, mode: str, cipher: Cipher | None) -> None:
        self.path, self.mode, self.cipher = path, mode, cipher
        self.ino = os.stat(path).st_ino
        meta = json.loads(_read(path, _META, self.ino))
        self.shapes = _unpack_arrays(_read(path, _ARRAYS, self.ino))["shapes"]  # [n, 2] stored (h, w)
        self.resize = int(meta["resize"])
        self._blob: torch.Tensor | None = None
        self._offsets: np.ndarray | None = None
        if mode == "ram":
            self._load_ram()

    def _load_ram(self) -> None:
        """Copy every value into one shared-memory buffer (visible to forked and spawned workers)."""
        values = [_read(self.path, _key(i), self.ino) or b"" for i in range(len(self.shapes))]
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        blob = torch.empty(int(offsets[-1]), dtype=torch.uint8)
        try:
            blob.share_memory_()
        except (RuntimeError, OSError) as e:  # e.g. a small /dev/shm in a container
            logger.warning(f"image cache: shared memory unavailable ({e}); workers share the RAM copy "
                           "only while they do not write to it (fork)")
        view = blob.numpy()
        for i, v in enumerate(values):
            view[offsets[i]:offsets[i + 1]] = np.frombuffer(v, np.uint8)
        self._blob, self._offsets = blob, offsets

    def get(self, index: int) -> np.ndarray | None:
        """The cached image of record ``index``, or None when it could not be cached."""
        if self._blob is not None:
            a, b = int(self._offsets[index]), int(self._offsets[index + 1])
            raw = self._blob.numpy()[a:b] if b > a else None
        else:
            raw = _read(self.path, _key(index), self.ino)
        if raw is None:
            return None
        if self.cipher is not None:
            raw = self.cipher.decrypt(bytes(raw), f"image cache {self.path} entry {index}", _key(index))
        h, w = (int(v) for v in self.shapes[index])
        img = (np.frombuffer(raw, np.uint8) if isinstance(raw, bytes) else raw).reshape(h, w, 3)
        img.flags.writeable = False  # a view of the shared cache: never modified in place
        return img


# -- validity -----------------------------------------------------------------------------
def _expected(records: RecordTable, resize: int, cipher: Cipher | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(settings, arrays) a valid cache of ``records`` holds; the files are stat-ed only when a
    check or a build needs it (``stat_stats`` is -1 here)."""
    settings = {"version": IMAGE_CACHE_VERSION, "resize": resize, "encrypted": cipher is not None}
    return settings, {**FileStats.unstated(records.files()).to_arrays("stat_"),
                      "img_hw": np.asarray(records.img_hw, np.int64), "shapes": _stored_shapes(records.img_hw, resize)}


def _why_invalid(path: Path, expected: tuple[dict, dict], cipher: Cipher | None, fresh: bool) -> str | None:
    """Why the cache at ``path`` cannot serve ``expected``, or None. ``fresh``: just built by the
    process this one waited for, so the files are not stat-ed again."""
    if not path.is_file():
        return "no cache yet"
    try:
        raw, raw_arrays = _read(path, _META), _read(path, _ARRAYS)
        meta = json.loads(raw) if raw is not None else None
    except (lmdb.Error, ValueError) as e:
        return f"unreadable cache ({e})"
    if meta is None:
        return "unreadable cache (no metadata)"
    settings, arrays = expected
    reason = settings_change(meta["settings"], settings)
    if reason or raw_arrays is None:
        return reason or "unreadable cache (no arrays)"
    old = _unpack_arrays(raw_arrays)
    old_stats, listed = FileStats.from_arrays(old, "stat_"), FileStats.from_arrays(arrays, "stat_")
    if not old_stats.same_paths(listed) or not np.array_equal(old["img_hw"], arrays["img_hw"]):
        return f"image list changed ({len(old_stats)} -> {len(listed)} images)"
    reason = None if fresh else old_stats.change(old_stats.now())
    if reason:
        return reason
    if cipher is not None:
        try:
            cipher.decrypt(bytes.fromhex(meta["check"]), f"image cache {path}", _CHECK)
        except CryptoError as e:
            raise DatasetError(f"{e}; set data.cache_refresh=True to rebuild it") from None
    return None


# -- building -----------------------------------------------------------------------------
def _build(path: Path, records: RecordTable, loader: Any, resize: int, cipher: Cipher | None,
           expected: tuple[dict, dict]) -> None:
    """Decode every image in a thread pool and write the LMDB file atomically."""
    settings, arrays = expected
    arrays = {**arrays, **FileStats.from_arrays(arrays, "stat_").now().to_arrays("stat_")}  # as of now
    raw_bytes = int(np.prod(arrays["shapes"], axis=1).sum()) * 3
    map_size = int(raw_bytes * 1.1) + 200 * len(records) + sum(a.nbytes for a in arrays.values()) + (64 << 20)

    def encode(i: int) -> bytes | ImageError:
        rec = records[i]
        try:  # resized: decoded and resized exactly as the uncached training pipeline does
            img = load_resized(loader, rec.file, tuple(rec.img_hw), resize) if resize else loader.load(rec.file)
        except ImageError as e:
            return e
        if not resize and img.shape[:2] != tuple(rec.img_hw):
            return ImageError(f"{rec.file}: size {img.shape[:2]} differs from the scanned "
                              f"{tuple(rec.img_hw)}")
        data = np.ascontiguousarray(img).tobytes()
        return cipher.encrypt(data, _key(i)) if cipher is not None else data

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    failed: list[str] = []
    try:
        env = lmdb.open(str(tmp), subdir=False, map_size=map_size, lock=False, sync=False,
                        metasync=False, meminit=False)
        with env, ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
                tqdm(total=len(records), desc=f"caching {len(records)} images", unit="img") as bar:
            for start in range(0, len(records), _CHUNK):
                idx = range(start, min(start + _CHUNK, len(records)))
                with env.begin(write=True) as txn:
                    for i, value in zip(idx, pool.map(encode, idx)):
                        if isinstance(value, ImageError):
                            failed.append(str(value))
                        else:
                            txn.put(_key(i), value)
                bar.update(len(idx))
            meta = {"settings": settings, "resize": resize,
                    "check": cipher.encrypt(_CHECK, _CHECK).hex() if cipher is not None else ""}
            with env.begin(write=True) as txn:
                txn.put(_META, json.dumps(meta).encode())
                txn.put(_ARRAYS, _pack_arrays(arrays))
            env.sync(True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if failed:
        logger.warning(f"{len(failed)} images could not be cached and are read from their files "
                       f"(e.g. {failed[0]})")


def open_image_cache(cfg: Any, records: RecordTable, directory: Path, loader: Any,
                     tag: str = "") -> ImageCache | None:
    """The image cache of ``records`` in ``directory`` (built or rebuilt when needed), or None
    when ``data.cache_images`` is "none" or the directory is not writable."""
    mode = cfg.data.cache_images
    if mode == "none" or not records:
        return None
    resize = cfg.data.img_size if cfg.data.cache_resize else 0
    cipher = cipher_for(cfg)
    path = directory / f"images_{f's{resize}' if resize else 'full'}{tag}.lmdb"
    expected = _expected(records, resize, cipher)
    before = file_identity(path)
    with locked(directory, f"the image cache {path.name}") as lock:
        if lock is None:
            return None
        fresh = lock.waited and file_identity(path) not in (None, before)
        refresh = refresh_wanted(cfg, path)
        reason = "data.cache_refresh=True" if refresh else _why_invalid(path, expected, cipher, fresh)
        if reason is None:
            logger.info(f"image cache {path}: valid, reused ({mode} mode)")
        else:
            logger.info(f"building image cache {path} ({reason})")
            _build(path, records, loader, resize, cipher, expected)
    if mode == "ram":
        need = int(np.prod(expected[1]["shapes"], axis=1).sum()) * 3
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if need > _RAM_FRACTION * avail:
            logger.warning(f"image cache needs {need / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB of memory "
                           "is available: using disk mode (memory-mapped) instead of ram")
            mode = "disk"
    return ImageCache(path, mode, cipher)
