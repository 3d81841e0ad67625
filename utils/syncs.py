"""Counting the operations that make the host wait for the device, on any device (CPU included).

On a GPU the host queues kernels and runs ahead; an operation whose result the host must know (a
Python number from a tensor, an output whose size depends on the data) stalls it until the queue
drains, and the GPU then idles while the host queues the next kernels. A CPU run hides every such
stall (nothing is queued), so this counter finds them by name instead, under a
``TorchDispatchMode``: what it counts on CPU is what would sync on CUDA.

    with SyncCounter() as syncs:
        trainer.train_step(images, targets)
    print(syncs.total, syncs.by_op)  # e.g. 1 {'aten::_local_scalar_dense': 1}

Counted (``SYNC_OPS`` and ``counts_as_sync``):
- ``_local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``;
- data-dependent output sizes: ``nonzero``, ``masked_select``, the ``unique`` family,
  ``repeat_interleave`` without ``output_size``, ``bincount`` (CUDA reads the maximum first);
- ``equal`` (returns a Python bool);
- indexing and ``index_put_`` with a boolean mask (``x[mask]``, ``x[mask] = v``: a ``nonzero``
  inside the kernel, invisible to the mode, so recognised by the index's dtype).

Not seen: ``.tolist()``, ``.numpy()`` and ``.cpu()`` of a tensor already on the CPU dispatch nothing;
on CUDA they are syncs too. Code whose syncs are counted here reads device values with ``.item()`` or
``int()``, never ``.tolist()``.

Counted although no sync on CUDA: what reads tensors that stay on the CPU there. torch.optim keeps
its step counters on the CPU (``step_t.item()`` per parameter in the single-tensor optimizers), so a
count of the training step wraps the optimizer's ``step`` in ``uncounted``.
"""
from __future__ import annotations

import functools
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal", "aten::bincount",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive",
})
_MASK_INDEXED = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def counts_as_sync(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether the op ``name`` (``aten::...``) called with ``args``/``kwargs`` waits for the device."""
    if name in SYNC_OPS:
        return True
    if name == "aten::repeat_interleave":  # the Tensor-repeats form without output_size reads the sum
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(repeats, torch.Tensor) or (len(args) == 1 and isinstance(args[0], torch.Tensor)):
            return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
        return False
    return name in _MASK_INDEXED and _has_bool_index(args)


class SyncCounter(TorchDispatchMode):
    """Counts the host-device syncs of the code run inside it (see the module doc).

    ``total``: the count; ``by_op``: Counter of op names; ``where``: with ``trace=True``, a short
    Python stack per sync (the innermost repo frames), to find each one.
    """

    def __init__(self, trace: bool = False) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.trace = trace
        self.where: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if counts_as_sync(name, args, kwargs):
            self.by_op[name] += 1
            if self.trace:
                self.where[_caller()] += 1
        return func(*args, **kwargs)


def _caller() -> str:
    """``file:line`` of the innermost frames outside torch, the place that asked for the sync."""
    import traceback
    frames = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                       for f in reversed(frames[-3:]))


def uncounted(fn):
    """``fn`` run outside every active dispatch mode (so outside a SyncCounter): for code whose tensors
    stay on the CPU on a GPU too (torch.optim's step counters)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return wrapper
