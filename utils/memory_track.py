"""Live tensor bytes on any device (the CPU included): what a piece of code holds at its peak.

    with LiveBytes() as mem:
        assigner.assign(targets, priors, preds)
    print(mem.peak, mem.current)  # bytes

Under a ``TorchDispatchMode``, every tensor an operator returns in a storage none of its inputs has
(a new allocation) is recorded by that storage (its ``data_ptr``) with the storage's ``nbytes``, and a
``weakref.finalize`` on the storage subtracts it when the storage is freed. Views and in-place results
share an input's storage and add nothing. ``current`` is the bytes of the storages made inside the
mode that are still alive, ``peak`` its largest value. Tensors made before the mode (the inputs) and
their views are not counted, and neither are the scratch buffers an operator frees before it returns:
``peak`` is the peak of the tensors Python code holds, which on a GPU is what the caching allocator
must find room for, plus at most one kernel's scratch.

``limit``: bytes; when ``current`` passes it the mode raises ``MemoryBudgetExceeded`` right after
the operator that passed it (that tensor is already allocated), so a measurement of code that would
need far more memory than the machine has stops early instead of swapping or being killed.

This module imports nothing but torch: a benchmark loads it by path next to another checkout's code.
"""
from __future__ import annotations

import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class MemoryBudgetExceeded(MemoryError):
    """The code under ``LiveBytes(limit=...)`` held more than ``limit`` bytes."""


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of the tensor storages created inside it (see the module doc).

    ``current``, ``peak``: bytes; ``limit``: None, or the bytes past which it raises."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.current = self.peak = 0
        self.limit = limit
        self._live: dict[int, tuple[int, weakref.ref, int]] = {}  # data_ptr -> (token, storage, nbytes)
        self._tokens = itertools.count()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_storage_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _storage_ptr(t) not in inputs:  # not a view or in-place result
                self._record(t)
        if self.limit is not None and self.current > self.limit:
            raise MemoryBudgetExceeded(f"{self.current / 2**30:.2f} GiB live, over the limit of "
                                       f"{self.limit / 2**30:.2f} GiB (after {func})")
        return out

    def _record(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage, new to this operator's inputs, unless it is counted already."""
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        known = self._live.get(ptr)
        if known is not None:
            if known[1]() is storage:
                return  # an output of a factory or a view op sharing a counted storage
            self._forget(ptr, known[0])  # the address was reused before the old storage's finalizer ran
        token = next(self._tokens)
        self._live[ptr] = (token, weakref.ref(storage), nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._forget, ptr, token)

    def _forget(self, ptr: int, token: int) -> None:
        """The storage recorded at ``ptr`` under ``token`` was freed."""
        known = self._live.get(ptr)
        if known is not None and known[0] == token:
            del self._live[ptr]
            self.current -= known[2]


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
