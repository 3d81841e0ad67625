"""Checkpoint files: atomic writes, safe loads, RNG states, shape-tolerant weight loading.

A checkpoint is a dict holding only tensors and plain Python values (None, bool, int,
float, str, bytes, and dict/list/tuple of those). That is exactly what
``torch.load(weights_only=True)`` accepts, so a checkpoint never needs pickle code to
load and an untrusted file cannot run code. NumPy values are refused at save time
(they load only with ``weights_only=False``; see YOLOX#1906).
"""
from __future__ import annotations

import collections
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch import nn

from utils.files import atomic_write

# Exact types, not isinstance: np.float64 subclasses float and would slip through.
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and the cause."""


# -- validation ------------------------------------------------------------------------
def _check_plain(x: Any, key_path: str) -> None:
    """Raise CheckpointError naming ``key_path`` of the first value that is not plain."""
    if type(x) in _PLAIN_SCALARS or type(x) in (torch.Tensor, nn.Parameter):
        return
    if type(x) in (dict, collections.OrderedDict):
        for k, v in x.items():
            if type(k) not in _PLAIN_SCALARS:
                raise CheckpointError(
                    f"checkpoint at {key_path or '<root>'}: dict key {k!r} has type "
                    f"{type(k).__module__}.{type(k).__qualname__}; use str/int keys")
            _check_plain(v, f"{key_path}.{k}" if key_path else str(k))
        return
    if type(x) in (list, tuple, torch.Size):
        for i, v in enumerate(x):
            _check_plain(v, f"{key_path}[{i}]")
        return
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    hint = " (convert with .item() or .tolist())" if isinstance(x, (np.generic, np.ndarray)) else ""
    raise CheckpointError(
        f"checkpoint value at {key_path or '<root>'!s} has type {kind}; only tensors and plain "
        f"Python values may be saved{hint}")


# -- save / load -----------------------------------------------------------------------
def _os_cause(exc: BaseException) -> str:
    """The strerror of the OSError behind ``exc`` (torch may wrap it in a RuntimeError)."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically.

    The data goes to ``<path>.tmp-<pid>`` in the same directory, is flushed and fsynced,
    then renamed over ``path`` with ``os.replace`` (atomic on POSIX), and the directory is
    fsynced. A crash or a full disk therefore leaves either the old file or the new one,
    never a half-written ``path``.

    Call it on rank 0 only: other ranks would race for the same file.

    Raises:
        CheckpointError: a value is not a tensor or plain Python value (the message gives
            its key path, e.g. ``rng.numpy.pos``), or the write failed ("could not write
            <path>: No space left on device"); the tmp file is removed and the previous
            ``path`` is untouched.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"could not write {path}: state must be a dict, got {type(state).__name__}")
    _check_plain(state, "")
    try:
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:  # torch reports failed writes as RuntimeError
        raise CheckpointError(f"could not write {path}: {_os_cause(e)}") from e


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp-<pid>`` files a killed :func:`save_checkpoint` left in ``directory``
    (never this process's own) and return them; a warning names each one. The checkpoints next to
    them are complete: a tmp file is only ever renamed once fully written."""
    removed = []
    for tmp in sorted(Path(directory).glob("*.tmp-*")):
        if tmp.is_file() and tmp.name.rsplit("-", 1)[-1] != str(os.getpid()):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            logger.warning(f"removed {tmp}: an unfinished checkpoint write of an interrupted run (the "
                           f"checkpoint it was replacing is intact)")
    return removed


def non_finite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names (``prefix`` + key) of the floating-point tensors of ``state`` holding NaN or Inf."""
    return [f"{prefix}{k}" for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class TopKCheckpoints:
    """Keeps the ``k`` best checkpoints of a run as ``<dir>/epoch<E>_<metric>_<value>.pth``.

    ``entries`` (best first) is plain data for the training checkpoint, so a resumed run keeps
    ranking the same files. A NaN or negative (not measurable) score never enters; a tie with
    the worst kept score does not replace it.
    """

    def __init__(self, directory: str | os.PathLike, k: int, metric: str) -> None:
        self.directory, self.k, self.metric = Path(directory), int(k), metric
        self.entries: list[dict] = []  # {"epoch": int, "score": float, "file": str}, best first

    def file_name(self, epoch: int, score: float) -> str:
        return f"epoch{epoch:03d}_{self.metric}_{score:.4f}.pth"

    def qualifies(self, score: float) -> bool:
        if self.k <= 0 or not math.isfinite(score) or score < 0:
            return False
        return len(self.entries) < self.k or score > self.entries[-1]["score"]

    def add(self, state: dict, epoch: int, score: float) -> str | None:
        """Save ``state`` under the top-K name if ``score`` qualifies, delete the file that drops
        out; returns the new file name (None when it does not qualify)."""
        if not self.qualifies(score):
            return None
        name = self.file_name(epoch, score)
        save_checkpoint(state, self.directory / name)
        kept = [e for e in self.entries if e["file"] != name] + [{"epoch": int(epoch), "score": float(score),
                                                                  "file": name}]
        kept.sort(key=lambda e: (-e["score"], e["epoch"]))
        for gone in kept[self.k:]:
            (self.directory / gone["file"]).unlink(missing_ok=True)
        self.entries = kept[:self.k]
        return name

    def state_dict(self) -> list[dict]:
        return [dict(e) for e in self.entries]

    def load_state_dict(self, entries: list[dict]) -> None:
        """Restore the ranking; entries whose file no longer exists are dropped."""
        self.entries = [dict(e) for e in entries if (self.directory / e["file"]).is_file()]


_TOPK_NAME = re.compile(r"epoch\d+_\w+_[\d.]+\.pth$")


def sibling_checkpoints(path: str | os.PathLike) -> list[str]:
    """Other checkpoint files next to ``path`` (best.pth, last.pth, top-K files), newest first:
    what an error about ``path`` can offer instead."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.glob("*.pth") if p.name != path.name
             and (p.name in ("best.pth", "last.pth") or _TOPK_NAME.match(p.name))]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ("model",)) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, on CPU, with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, is a pickle that is not
            a plain checkpoint (anything needing code to rebuild is refused, never run),
            is not a dict, or lacks one of ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every failure becomes one clear error
        raise CheckpointError(f"{path}: {_load_cause(e)}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__}, expected a dict)")
    for key in required:
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key!r} (keys present: {sorted(map(str, state))})")
    return state


def _load_cause(e: Exception) -> str:
    """Describe why torch.load failed in words a user can act on."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, EOFError):
        return "empty or truncated file"
    if "weights only load failed" in str(e).lower():
        # The weights_only unpickler refused a global: either an old-style checkpoint
        # holding numpy/custom objects or a crafted file. Never retry with weights_only=False.
        detail = [ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        why = detail[0].strip() if detail else first
        return (f"not a plain checkpoint: the weights_only loader refused it ({why}); the file is "
                f"corrupt or holds objects that need code to load (such files are never executed)")
    if isinstance(e, RuntimeError) and ("zip" in str(e).lower() or "PytorchStreamReader" in str(e)):
        return f"truncated or corrupt checkpoint file ({first.split('. ')[0]})"
    return f"not a checkpoint ({type(e).__name__}: {first})"


# -- RNG state -------------------------------------------------------------------------
def rng_state() -> dict:
    """Python, NumPy, torch CPU and (if available) CUDA RNG states as plain data/tensors.

    Format: ``{"python": [version, [625 ints], gauss_next], "numpy": {"name": str,
    "keys": uint32 tensor [624], "pos": int, "has_gauss": int, "cached_gaussian": float},
    "torch": uint8 tensor, "cuda": [uint8 tensor per device]}`` (``cuda`` only with CUDA).
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.array(keys, dtype=np.uint32)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(d: dict) -> None:
    """Restore states captured by :func:`rng_state`; missing entries are left as they are."""
    if "python" in d:
        version, internal, gauss = d["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in d:
        n = d["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
    if "torch" in d:
        torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available():
        states = d["cuda"]
        count = torch.cuda.device_count()
        if len(states) != count:
            logger.warning(f"checkpoint has CUDA RNG states for {len(states)} devices, this machine has "
                           f"{count}; restoring the first {min(count, len(states))}")
        for i, s in enumerate(states[:count]):
            torch.cuda.set_rng_state(s, i)


# -- partial weight loading ------------------------------------------------------------
def preferred_weights(ckpt: dict, prefer_ema: bool = True) -> dict:
    """The model state dict of a checkpoint of this repo: its EMA weights when it has them (and
    ``prefer_ema``), else its raw weights."""
    ema = ckpt.get("ema")
    return ema["model"] if prefer_ema and ema else ckpt["model"]


def load_matching(model: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``state_dict`` whose name and shape match ``model``'s.

    Used to fine-tune from a checkpoint with another class count: the head tensors whose
    shape changed are skipped and listed in one warning.

    Returns:
        (loaded, skipped): names copied; names skipped because their shape differs, they
        are absent from the model, or the model's tensor is absent from ``state_dict``.
    """
    own = model.state_dict()
    loaded: list[str] = []
    reasons: dict[str, str] = {}
    with torch.no_grad():
        for name, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                continue
            if name not in own:
                reasons[name] = "not in model"
            elif own[name].shape != value.shape:
                reasons[name] = f"checkpoint {list(value.shape)} vs model {list(own[name].shape)}"
            else:
                own[name].copy_(value)
                loaded.append(name)
    for name in own:
        if name not in state_dict:
            reasons[name] = "not in checkpoint"
    if reasons:
        listing = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        logger.warning(f"load_matching: loaded {len(loaded)} tensors, skipped {len(reasons)}: {listing}")
    return loaded, list(reasons)
