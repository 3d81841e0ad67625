"""Start-up checks of the process limits DataLoader workers run into.

Each worker holds pipes and, with PyTorch's default ``file_descriptor`` sharing strategy, one
descriptor per tensor storage in flight (``prefetch_factor`` batches of images and targets).
Too many workers for ``ulimit -n`` fail later with "Too many open files"; a small ``/dev/shm``
(Docker's default is 64 MB) fails with a bus error. Here the soft open-file limit is raised to
the hard limit when that helps; if it is still too low, fewer workers are used, with a message
saying how to raise it. A small ``/dev/shm`` gets a warning.
"""
from __future__ import annotations

import os
import resource

from loguru import logger

_FDS_BASE = 64  # headroom for the main process (logs, checkpoints, datasets, LMDB)
_FDS_PER_WORKER = 8  # pipes, queues and the worker's own files
_FDS_PER_BATCH = 4  # storages of one collated batch in flight


def fds_needed(num_workers: int, prefetch_factor: int) -> int:
    """Descriptors a loader with these settings may hold at once, beyond those already open."""
    return num_workers * (_FDS_PER_WORKER + _FDS_PER_BATCH * prefetch_factor) + _FDS_BASE


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def workers_within_file_limit(num_workers: int, prefetch_factor: int) -> int:
    """``num_workers``, or fewer when the open-file limit cannot hold them (with a warning)."""
    if num_workers <= 0:
        return num_workers
    need = _open_fds() + fds_needed(num_workers, prefetch_factor)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the current limit; the workers are lowered below
    if soft == resource.RLIM_INFINITY or soft >= need:
        return num_workers
    per_worker = fds_needed(1, prefetch_factor) - _FDS_BASE
    fit = max(0, (soft - _open_fds() - _FDS_BASE) // per_worker)
    logger.warning(f"open-file limit (ulimit -n) is {soft}, but {num_workers} DataLoader workers with "
                   f"prefetch_factor {prefetch_factor} may need about {need} descriptors: using "
                   f"{fit} workers. Raise the limit (e.g. `ulimit -n 65536`, or LimitNOFILE in a "
                   "service) to use more.")
    return min(num_workers, fit)


def warn_small_shm(batch_bytes: int, num_workers: int, prefetch_factor: int) -> None:
    """Warn when /dev/shm cannot hold the batches the workers may have in flight."""
    if num_workers <= 0:
        return
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    need = 2 * batch_bytes * num_workers * prefetch_factor
    if free < need:
        logger.warning(f"/dev/shm has {free / 2**20:.0f} MiB free but the DataLoader may need about "
                       f"{need / 2**20:.0f} MiB for batches in flight; workers may die with a bus error. "
                       "Give the container more (docker --shm-size=2g) or lower data.num_workers.")
