"""Label cache: a split's scanned records and scan summary, reused until something they depend on
changes.

The cache stores the settings the scan ran with (format, parser version, root, sets, class
names, strict/difficult/containment flags, image loader, encryption) and the size and mtime of
every file it read (set lists, json files, image folders, images, annotation files, including
annotation files that did not exist). It is valid when the settings are equal and every one of
those files still has its size and mtime (a missing file must still be missing); otherwise the
split is scanned again and the log says why.

``data.cache_refresh`` rebuilds a cache once per run (see ``refresh_wanted``).

Files live in ``<cache dir>/<format>_<split>_<hash of root and sets>/``: ``labels.npz`` holds the
``RecordTable``'s arrays, the file stats as arrays (``datasets.file_stats``: names in one buffer,
sizes and mtimes in an int64 array) and a small JSON meta (settings, scan summary): numpy arrays
only, loaded with ``allow_pickle=False``, so a warm load of a COCO-sized split builds no Python
object per image or file. It is encrypted as a whole when ``data.encrypt_cache`` is set. Writes
are atomic (temp file + ``os.replace``).

Scan once: a lock file (``flock``) serialises the processes building one cache: DDP ranks, and
the ranks of other nodes when the cache dir is shared. The first to take the lock scans and
writes; the others log that they wait, then load what it wrote without stat-ing every file again
(the cache file was replaced while they waited, so it is as fresh as their own check would be).
No torch.distributed collective is involved, so a long scan cannot hit a collective timeout.

The scan and the cache write run in a child process (``datasets.scan.run_scan``) while this
process holds the lock: the parsing's objects, the file list and its stats die with the child.
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
from datasets.file_stats import FileStats
from datasets.records import RecordTable
from datasets.scan import DatasetError, ScanReport, run_scan
from utils.files import write_bytes_atomic

CACHE_VERSION = 3  # 3: records keep the dataset's image ids; 2: RecordTable arrays and array file stats
# (1 held one JSON entry per file)
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


@dataclasses.dataclass
class Lock:
    """A held cache lock; ``waited``: another process held it first (and may have built the cache)."""

    waited: bool


@contextlib.contextmanager
def locked(directory: Path, purpose: str = "the cache") -> Iterator[Lock | None]:
    """Hold the exclusive lock of ``directory/.lock`` while other processes building the same
    cache wait (and log it). Yields None, without locking, when the directory cannot be created
    or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / ".lock", "a+")  # noqa: SIM115 (closed below, after the unlock)
    except OSError as e:
        logger.warning(f"cache disabled: cannot write {directory} ({e.strerror or e}); set "
                       "data.cache_dir to a writable folder")
        yield None
        return
    with f:
        waited = _acquire(f, directory, purpose)
        try:
            yield Lock(waited)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _acquire(f: Any, directory: Path, purpose: str) -> bool:
    """Take the lock of ``f``; True when another process held it and this one waited."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        pass
    logger.info(f"waiting for another process building {purpose} in {directory} (it holds "
                f"{directory / '.lock'}) ...")
    t0 = time.monotonic()
    fcntl.flock(f, fcntl.LOCK_EX)
    logger.info(f"... {purpose}: lock released after {time.monotonic() - t0:.1f} s")
    return True


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime ns) of ``path``, None when it does not exist; an atomic replace changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def settings_change(old: dict, new: dict) -> str | None:
    """Which settings differ, with old and new values, or None."""
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)]
    return "settings changed: " + "; ".join(diffs) if diffs else None


# -- file format --------------------------------------------------------------------------
def _pack(table: RecordTable, stats: FileStats, meta: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **table.to_arrays("rec_"), **stats.to_arrays("stat_"))
    return buf.getvalue()


def _read(path: Path, cipher: Cipher | None) -> tuple[dict, dict[str, np.ndarray]] | str:
    """(meta, arrays by name), or the reason the file cannot be used."""
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
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        return f"unreadable cache ({type(e).__name__})"


def _report_from(d: dict) -> ScanReport:
    d = dict(d)
    d["skipped"] = [tuple(x) for x in d.get("skipped", [])]
    return ScanReport(**d)


def _load(path: Path, cipher: Cipher | None, settings: dict, fresh: bool) -> tuple[RecordTable, ScanReport] | str:
    """The cached (records, report), or why they cannot be used. ``fresh``: just written by the
    process this one waited for, so the files are not stat-ed again."""
    got = _read(path, cipher)
    if isinstance(got, str):
        return got
    meta, arrays = got
    reason = settings_change(meta.get("settings", {}), settings)
    if reason:  # an old cache version is reported here, before its arrays are looked at
        return reason
    try:
        stats = FileStats.from_arrays(arrays, "stat_")
        table = RecordTable.from_arrays(arrays, "rec_")
        report = _report_from(meta["report"])
    except (KeyError, ValueError, TypeError) as e:
        return f"unreadable cache ({type(e).__name__})"
    return (None if fresh else stats.change(stats.now())) or (table, report)


# -- the cached scan ----------------------------------------------------------------------
def cached_scan(parser: Any, split: str, class_names: list[str], cfg: Any) -> tuple[RecordTable, ScanReport]:
    """``parser.scan(split, class_names)`` through the label cache (see the module doc)."""
    cipher = cipher_for(cfg)
    settings = {**parser.settings(), "sets": parser.sets(split), "split": split,
                "class_names": list(class_names), "encrypted": cipher is not None, "version": CACHE_VERSION}
    directory = split_cache_dir(cfg, parser.name, parser.root, parser.sets(split), split)
    path = directory / "labels.npz"
    before = file_identity(path)
    with locked(directory, f"the label cache of split {split!r}") as lock:
        if lock is None:
            return run_scan(parser.records, split, class_names)
        fresh = lock.waited and file_identity(path) not in (None, before)
        return _scan_or_load(parser, split, class_names, cfg, settings, path, cipher, fresh)


def _scan_or_load(parser: Any, split: str, class_names: list[str], cfg: Any, settings: dict, path: Path,
                  cipher: Cipher | None, fresh: bool) -> tuple[RecordTable, ScanReport]:
    refresh = refresh_wanted(cfg, path)
    reason = "data.cache_refresh=True" if refresh else "no cache yet"
    if path.is_file() and not refresh:
        got = _load(path, cipher, settings, fresh)
        if not isinstance(got, str):
            how = " (just built by the process this one waited for)" if fresh else ""
            logger.info(f"labels of split {split!r} from the cache {path}{how}")
            return got
        reason = got
    logger.info(f"scanning split {split!r} ({reason})")
    return run_scan(_scan_and_write, parser, split, class_names, settings, path, cipher)


def _scan_and_write(parser: Any, split: str, class_names: list[str], settings: dict, path: Path,
                    cipher: Cipher | None) -> tuple[RecordTable, ScanReport]:
    """The scan and the cache file (in the scan's child process, see ``run_scan``)."""
    records, report, files = parser.scan(split, class_names)
    stats = FileStats.of(sorted({str(p) for p in files}))
    data = _pack(records, stats, {"settings": settings, "report": dataclasses.asdict(report)})
    try:
        write_bytes_atomic(path, cipher.encrypt(data, _AAD) if cipher is not None else data)
    except OSError as e:
        logger.warning(f"could not write the label cache {path} ({e.strerror or e}); continuing without it")
    return records, report
