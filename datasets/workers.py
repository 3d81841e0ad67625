"""The DataLoader's worker side: worker start-up (seeds, stop signals only from the parent), the
fork-friendly loader class and its stall error (``datasets.dataset.build_dataloader`` builds them)."""
from __future__ import annotations

import gc
import os
import random
import signal
import threading

import numpy as np
from torch.utils.data import DataLoader

from utils.memory import release_free_memory


def _stop_on_parent_sigterm_only() -> None:
    """Block SIGTERM in this (single-threaded, just forked) worker and threads it starts later; a
    daemon thread waits for it and exits the process when the parent is the sender."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()


class LoaderStallError(RuntimeError):
    """The DataLoader workers delivered no batch within ``data.loader_timeout_s``."""


class DetectionLoader(DataLoader):
    """A DataLoader whose timeout (``data.loader_timeout_s``) raises LoaderStallError naming the
    cause and the setting, instead of torch's bare "DataLoader timed out".

    While its workers are forked, freed heap goes back to the OS and the objects alive in this
    process are out of reach of the cyclic GC (``gc.freeze``): the workers inherit them frozen, so
    a collection there never writes into (and so copies) the parent's pages (about 100 MB per
    worker, measured in benchmarks/scale.py). This process unfreezes them once the workers run.
    """

    def __iter__(self):
        if self.num_workers == 0 or (self._iterator is not None and self.persistent_workers):
            return _Guarded(super().__iter__(), self)  # no worker is forked
        release_free_memory()
        gc.freeze()
        try:
            return _Guarded(super().__iter__(), self)
        finally:
            gc.unfreeze()


class _Guarded:
    def __init__(self, it, loader: DetectionLoader) -> None:
        self._it, self._loader = it, loader

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._it)

    def __next__(self):
        try:
            return next(self._it)
        except RuntimeError as e:
            loader = self._loader
            if not loader.timeout or "timed out" not in str(e):
                raise
            raise LoaderStallError(
                f"no batch from the {loader.num_workers} DataLoader workers in {loader.timeout:g} s "
                f"(data.loader_timeout_s): a worker is stalled, e.g. on a hung read of slow or network "
                f"storage or in a custom image loader. Raise data.loader_timeout_s if batches are really "
                f"that slow, or set data.num_workers=0 to find the stall in the main process") from None


def _worker_init(worker_id: int, seed: int, rank: int) -> None:
    """Seed numpy/random per worker (and rank), and let only the parent stop the worker.

    A scheduler's stop signal reaches the whole process group (torchrun, SLURM, ``kill -TERM -PGID``,
    Ctrl-C): the workers must outlive it, so the training process can finish its step and write
    last.pth. SIGINT is ignored; SIGTERM is taken by a thread that ends the worker only when the
    parent sent it (the DataLoader's shutdown, multiprocessing at the parent's exit) and ignores
    everyone else's. Orphaned workers exit on their own (torch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_on_parent_sigterm_only()
    s = (seed * 1000 + rank * 100 + worker_id) % 2**32
    np.random.seed(s)
    random.seed(s)
