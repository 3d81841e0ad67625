"""Label cache: a split's scanned records and scan summary, reused until something they depend on
changes.

The cache stores the settings the scan ran with (format, parser version, root, sets, class
names, strict/difficult/containment flags, image loader, encryption) and the size and mtime of
every file it read (set lists, json files, image folders, images, annotation files, including
annotation files that did not exist). It is valid when the settings are equal and every one of
those files still has its size and mtime (a missing file must still be missing); otherwise the
split is scanned again and the log says why.

``data.cache_refresh`` rebuilds a cache once per run (see ``refresh_wanted``).

Files live in ``<cache dir>/<format>_<split>_<hash of root and sets>/``: ``labels.npz`` (numpy
arrays only, loaded with ``allow_pickle=False``), encrypted as a whole when
``data.encrypt_cache`` is set. Writes are atomic (temp file + ``os.replace``), and a lock file
serialises processes (e.g. DDP ranks) building the same cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from datasets.crypto import MAGIC, Cipher, CryptoError
from datasets.records import Record
from datasets.scan import DatasetError, ScanReport

CACHE_VERSION = 1
_LISTED = 3  # changed files named in a log line
_AAD = b"labels"
_STARTED_NS = time.time_ns()  # when this process started using caches


def refresh_wanted(cfg: Any, path: Path) -> bool:
    """``data.cache_refresh``, unless ``path`` was already rebuilt since this process started: under
    torchrun the first rank rebuilds and the others, waiting on the lock, reuse its result."""
    try:
        return cfg.data.cache_refresh and path.stat().st_mtime_ns < _STARTED_NS
    except OSError:
        return cfg.data.cache_refresh


def cache_root(cfg: Any) -> Path:
    """``data.cache_dir``, or ``<train.save_dir>/cache``."""
    return Path(cfg.data.cache_dir or Path(cfg.train.save_dir) / "cache").expanduser()


def split_cache_dir(cfg: Any, fmt: str, root: Path, sets: list[str], split: str) -> Path:
    """One folder per (format, dataset root, sets, split)."""
    ident = hashlib.sha256(json.dumps([fmt, str(root), list(sets)]).encode()).hexdigest()[:12]
    return cache_root(cfg) / f"{fmt}_{split}_{ident}"


def cipher_for(cfg: Any) -> Cipher | None:
    """The cipher of ``data.key_env`` when ``data.encrypt_cache`` is set, else None."""
    if not cfg.data.encrypt_cache:
        return None
    try:
        return Cipher.from_env(cfg.data.key_env)
    except CryptoError as e:
        raise DatasetError(f"data.encrypt_cache=True: {e}") from None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[bool]:
    """Hold the exclusive lock of ``directory/.lock`` (other processes building the same cache
    wait). Yields False, without locking, when the directory cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / ".lock", "a+")  # noqa: SIM115 (closed below, after the unlock)
    except OSError as e:
        logger.warning(f"cache disabled: cannot write {directory} ({e.strerror or e}); set "
                       "data.cache_dir to a writable folder")
        yield False
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def file_stats(paths: list[Path]) -> dict[str, list[int]]:
    """{path: [size, mtime_ns]} ([-1, -1] for a missing path)."""
    out: dict[str, list[int]] = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[str(p)] = [int(st.st_size), int(st.st_mtime_ns)]
        except OSError:
            out[str(p)] = [-1, -1]
    return out


def stats_change(old: dict[str, list[int]], new: dict[str, list[int]]) -> str | None:
    """Why ``new`` differs from ``old`` (counts and a few named files), or None when equal."""
    kinds: dict[str, list[str]] = {"added": [], "removed": [], "modified": []}
    for path in old.keys() | new.keys():
        a, b = old.get(path, [-1, -1]), new.get(path, [-1, -1])
        if a == b:
            continue
        kinds["added" if a[0] < 0 else "removed" if b[0] < 0 else "modified"].append(path)
    parts = [f"{len(v)} {k} (e.g. {', '.join(sorted(v)[:_LISTED])})" for k, v in kinds.items() if v]
    return "files changed: " + "; ".join(parts) if parts else None


def settings_change(old: dict, new: dict) -> str | None:
    """Which settings differ, with old and new values, or None."""
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)]
    return "settings changed: " + "; ".join(diffs) if diffs else None


# -- file format --------------------------------------------------------------------------
def _stack(boxes: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([b.reshape(-1, 4) for b in boxes] or [np.zeros((0, 4))]).astype(np.float32)


def _pack(records: list[Record], meta: dict) -> bytes:
    counts = [len(r.boxes) for r in records]
    ign = [len(r.ignore) for r in records]
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "files": np.array([r.file for r in records], dtype=str),
        "image_ids": np.array([r.image_id for r in records], np.int64),
        "img_hw": np.array([r.img_hw for r in records], np.int64).reshape(-1, 2),
        "n_boxes": np.array(counts, np.int64), "n_ignore": np.array(ign, np.int64),
        "boxes": _stack([r.boxes for r in records]),
        "labels": np.concatenate([r.labels for r in records] or [np.zeros(0)]).astype(np.int64),
        "ignore": _stack([r.ignore for r in records]),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[dict, list[Record]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        b_end, i_end = np.cumsum(z["n_boxes"]), np.cumsum(z["n_ignore"])
        boxes, labels, ignore = z["boxes"], z["labels"], z["ignore"]
        records = [Record(image_id=int(iid), file=str(f), img_hw=(int(hw[0]), int(hw[1])),
                          boxes=boxes[be - nb:be].copy(), labels=labels[be - nb:be].copy(),
                          ignore=ignore[ie - ni:ie].copy())
                   for iid, f, hw, nb, be, ni, ie in zip(z["image_ids"], z["files"], z["img_hw"],
                                                         z["n_boxes"], b_end, z["n_ignore"], i_end)]
    return meta, records


def _report_from(d: dict) -> ScanReport:
    d = dict(d)
    d["skipped"] = [tuple(x) for x in d.get("skipped", [])]
    return ScanReport(**d)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, cipher: Cipher | None) -> tuple[dict, list[Record]] | str:
    """(meta, records), or the reason the file cannot be used."""
    data = path.read_bytes()
    encrypted = data.startswith(MAGIC)
    if encrypted and cipher is None:
        return "the cache is encrypted but data.encrypt_cache is off"
    if cipher is not None and not encrypted:
        return "the cache is not encrypted but data.encrypt_cache is on"
    if cipher is not None:
        try:
            data = cipher.decrypt(data, f"label cache {path}", _AAD)
        except CryptoError as e:
            raise DatasetError(f"{e}; set data.cache_refresh=True to rebuild it") from None
    try:
        return _unpack(data)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        return f"unreadable cache ({type(e).__name__})"


# -- the cached scan ----------------------------------------------------------------------
def cached_scan(parser: Any, split: str, class_names: list[str], cfg: Any) -> tuple[list[Record], ScanReport]:
    """``parser.scan(split, class_names)`` through the label cache (see the module doc)."""
    cipher = cipher_for(cfg)
    settings = {**parser.settings(), "sets": parser.sets(split), "split": split,
                "class_names": list(class_names), "encrypted": cipher is not None, "version": CACHE_VERSION}
    directory = split_cache_dir(cfg, parser.name, parser.root, parser.sets(split), split)
    path = directory / "labels.npz"
    with locked(directory) as writable:
        if not writable:
            records, report, _ = parser.scan(split, class_names)
            return records, report
        return _scan_or_load(parser, split, class_names, cfg, settings, path, cipher)


def _scan_or_load(parser: Any, split: str, class_names: list[str], cfg: Any, settings: dict, path: Path,
                  cipher: Cipher | None) -> tuple[list[Record], ScanReport]:
    refresh = refresh_wanted(cfg, path)
    reason = "data.cache_refresh=True" if refresh else "no cache yet"
    if path.is_file() and not refresh:
        got = _read(path, cipher)
        if isinstance(got, str):
            reason = got
        else:
            meta, records = got
            reason = (settings_change(meta["settings"], settings)
                      or stats_change(meta["files"], file_stats([Path(p) for p in meta["files"]])))
            if reason is None:
                logger.info(f"labels of split {split!r} from the cache {path}")
                return records, _report_from(meta["report"])
    logger.info(f"scanning split {split!r} ({reason})")
    records, report, files = parser.scan(split, class_names)
    meta = {"settings": settings, "files": file_stats(sorted(set(files))),
            "report": dataclasses.asdict(report)}
    data = _pack(records, meta)
    try:
        _write_atomic(path, cipher.encrypt(data, _AAD) if cipher is not None else data)
    except OSError as e:
        logger.warning(f"could not write the label cache {path} ({e.strerror or e}); continuing without it")
    return records, report
