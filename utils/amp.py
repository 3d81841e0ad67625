"""Mixed precision: the one rule deciding the autocast of the training, validation and benchmark forwards.

``train.amp`` switches AMP on, ``train.amp_dtype`` picks the half type. fp16 autocast runs on CUDA
only (on the CPU it is slower than fp32 and its convolutions are not all implemented); bf16 runs on
CUDA and on the CPU (bfloat16 kernels exist for both). Anything else runs in fp32. A GradScaler is
needed for fp16 only: bf16 has fp32's exponent range, so its gradients do not underflow.

Only the forward runs under the autocast: decoding, assignment, loss, NMS and scoring read its
output cast back to fp32.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # train.amp_dtype -> torch dtype
_BF16_DEVICES = ("cuda", "cpu")  # device types whose autocast has bfloat16 kernels


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def amp_dtype_for(device: torch.device | str, amp: bool, dtype: str) -> torch.dtype | None:
    """The autocast dtype a forward on ``device`` runs in, or None for plain fp32.

    amp: ``train.amp``; dtype: ``train.amp_dtype`` ("fp16" or "bf16"; ValueError otherwise).
    """
    if dtype not in AMP_DTYPES:
        raise ValueError(f"amp dtype {dtype!r} is not one of {list(AMP_DTYPES)}")
    kind = _device_type(device)
    if not amp:
        return None
    if dtype == "fp16":
        return torch.float16 if kind == "cuda" else None  # fp16 is ignored off CUDA (train.amp's comment)
    return torch.bfloat16 if kind in _BF16_DEVICES else None


def autocast_for(device: torch.device | str, amp: bool, dtype: str) -> AbstractContextManager:
    """The context to run a forward in: ``torch.autocast(device type, dtype)`` when ``amp_dtype_for``
    gives a dtype, else a no-op context (fp32). Enter it around the forward only."""
    half = amp_dtype_for(device, amp, dtype)
    return torch.autocast(_device_type(device), dtype=half) if half is not None else nullcontext()


def precision_name(device: torch.device | str, amp: bool, dtype: str) -> str:
    """"fp16", "bf16" or "fp32": the precision ``autocast_for`` makes a forward on ``device`` run in."""
    half = amp_dtype_for(device, amp, dtype)
    return {torch.float16: "fp16", torch.bfloat16: "bf16", None: "fp32"}[half]


def needs_grad_scaler(device: torch.device | str, amp: bool, dtype: str) -> bool:
    """True when training needs a GradScaler: fp16 autocast (on CUDA); bf16 and fp32 need none."""
    return amp_dtype_for(device, amp, dtype) == torch.float16


def fp32(x: Any) -> Any:
    """A forward's output back in fp32 (a tensor, or a tuple / list of them, e.g. (main, aux)): what
    decoding, assignment, loss and NMS read after an autocast forward. Other tensors pass unchanged."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if isinstance(x, tuple | list):
        return type(x)(fp32(v) for v in x)
    return x
