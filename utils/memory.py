"""Handing freed memory back to the OS: for long runs and for DataLoader workers.

A leaf module (nothing of the repo imported), so the data pipeline can use it as well as the
trainer and the logging helpers.
"""
from __future__ import annotations

import functools
import gc


def release_free_memory() -> None:
    """Collect reference cycles, then hand the freed heap back to the OS (glibc ``malloc_trim``).

    Validation leaves cycles (matplotlib figures, COCO structures) that the generational GC frees
    late, and glibc keeps freed blocks in its per-thread arenas; a thread started under load (the
    pin-memory thread, a DataLoader iterator) can open a new arena. Trimmed once per epoch, the
    resident memory of a long run tracks what is live instead of stepping up with arena churn.
    Elsewhere than glibc only the collection runs.
    """
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand the freed heap back to the OS (glibc ``malloc_trim``; nothing elsewhere than glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, or no ctypes)."""
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError, ImportError):
        return None
