"""Loading official YOLOv9 / GELAN / YOLOv7 weights into the graph networks (spec section 8).

Accepted key schemes (detected by how many keys each reading maps onto the model):
- MIT release files (``v9-t.pt`` ...): the state dict of MIT's layer list, keys ``{row}.{path}``;
- MIT / FORK Lightning checkpoints: ``{"state_dict": {"model.model.{row}.{path}": ...}}``;
- this repo's GraphNet state dicts, keys ``model.{row}.{path}``;
- ORIG (WongKinYiu/yolov9 and yolov7) state dicts, keys ``model.{i}.{ORIG path}``: converted
  gelan files (``gelan-*.pt``, ``yolov9-*-converted.pt``), dual training files (``yolov9-*.pt``;
  their Main and AUX heads are split apart) and ``yolov7.pt``. ORIG checkpoints are pickled
  models, which this loader never unpickles: save ``ckpt["model"].float().state_dict()`` with the
  ORIG code first and pass that dict (or its file).

The DFL projection constants (MIT ``anc2vec``, ORIG ``dfl``/``dfl2``) are dropped. Tensors whose
shape differs (the class layers of a file trained on another class count) are left at their
initial values and listed in one warning.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from loguru import logger
from torch import Tensor, nn

from models.blocks import (
    ELAN,
    SPPCSPC,
    SPPELAN,
    AConv,
    ADown,
    Bottleneck,
    RepConv,
    RepNCSP,
    RepNCSPELAN,
)
from models.heads.dfl_head import DFLHead
from models.heads.v7_head import IDetectHead
from models.nets.graph import GraphNet
from utils.checkpoint import load_checkpoint

_CONSTANT = re.compile(r"(^|\.)(anc2vec|dfl2?)\.")  # DFL projection weights, always [0..15]
_OWN_CONSTANT = "anc2vec_bins"  # ours (models.heads.dfl_head.DFLHead); files need not carry it
_CONV4 = {"conv1": "cv1", "conv2": "cv2", "conv3": "cv3", "conv4": "cv4"}

# ORIG attribute names of our children, per block class (a key may span two path components).
_ORIG_NAMES: dict[type, dict[str, str]] = {
    AConv: {"conv": "cv1"},
    ADown: {"conv1": "cv1", "conv2": "cv2"},
    ELAN: _CONV4,
    RepNCSPELAN: _CONV4,
    RepNCSP: {"conv1": "cv1", "conv2": "cv2", "conv3": "cv3", "bottleneck": "m"},
    Bottleneck: {"conv1": "cv1", "conv2": "cv2"},
    SPPELAN: {"conv1": "cv1", "conv5": "cv5"},
    SPPCSPC: {"pre_conv.0": "cv1", "pre_conv.1": "cv3", "pre_conv.2": "cv4", "short_conv": "cv2",
              "post_conv.0": "cv5", "post_conv.1": "cv6", "merge_conv": "cv7"},
}
# The v7 RepConv keeps each branch as Sequential(Conv2d, BatchNorm2d); v9's RepConvN uses MIT's names.
_ORIG_V7_REPCONV = {"conv1.conv": "rbr_dense.0", "conv1.bn": "rbr_dense.1",
                    "conv2.conv": "rbr_1x1.0", "conv2.bn": "rbr_1x1.1"}


@dataclass(frozen=True)
class OrigLayout:
    """Where our rows sit in an ORIG file. rows: (first, last, offset) ranges, ORIG row = row +
    offset; heads: our head row -> (ORIG row, box-branch group, class-branch group)."""

    rows: tuple[tuple[int, int, int], ...]
    heads: dict[int, tuple[int, str, str]]

    def orig_row(self, row: int) -> int | None:
        for first, last, offset in self.rows:
            if first <= row <= last:
                return row + offset
        return None


# spec section 8.2. "gelan": converted files (single head: cv2 = box, cv3 = class); "dual": the
# yolov9 training files, whose DualDDetect holds AUX as cv2/cv3 and Main as cv4/cv5.
_SMALL = {"gelan": OrigLayout(((0, 21, 0),), {22: (22, "cv2", "cv3")}),
          "dual": OrigLayout(((0, 21, 0), (23, 29, -1)), {22: (29, "cv4", "cv5"), 30: (29, "cv2", "cv3")})}
_LARGE = {"gelan": OrigLayout(((0, 21, 0),), {22: (22, "cv2", "cv3")}),
          "dual": OrigLayout(((0, 21, 1), (23, 37, 0)), {22: (38, "cv4", "cv5"), 38: (38, "cv2", "cv3")})}
_E = {"gelan": OrigLayout(((1, 28, 0), (36, 48, -7)), {49: (42, "cv2", "cv3")}),
      "dual": OrigLayout(((1, 48, 0),), {49: (49, "cv4", "cv5"), 50: (49, "cv2", "cv3")})}
ORIG_LAYOUTS: dict[str, dict[str, OrigLayout]] = {
    "v9-t": _SMALL, "gelan-t": _SMALL, "v9-s": _SMALL, "gelan-s": _SMALL,
    "v9-m": _LARGE, "gelan-m": _LARGE, "v9-c": _LARGE, "gelan-c": _LARGE,
    "v9-e": _E, "gelan-e": _E,
    "v7": {"yolov7": OrigLayout(((0, 104, 0),), {105: (105, "", "")})},
}


def _orig_block_path(module: nn.Module, parts: list[str], v7: bool) -> str:
    """Translate an attribute path below a (non-head) row module to ORIG names."""
    out: list[str] = []
    i = 0
    while i < len(parts):
        names = _ORIG_V7_REPCONV if v7 and isinstance(module, RepConv) else _ORIG_NAMES.get(type(module), {})
        for n in (2, 1):
            key = ".".join(parts[i:i + n])
            if i + n <= len(parts) and key in names:
                out.append(names[key])
                break
        else:
            n = 1
            out.append(parts[i])
        for p in parts[i:i + n]:
            module = getattr(module, p)
        i += n
    return ".".join(out)


def _orig_head_path(head: nn.Module, path: str, box: str, cls: str) -> str | None:
    """Translate an attribute path below a head; None for our DFL constant (no ORIG counterpart)."""
    if isinstance(head, DFLHead):
        m = re.fullmatch(r"heads\.(\d+)\.(anchor_conv|class_conv)\.(.+)", path)
        return None if m is None else f"{box if m[2] == 'anchor_conv' else cls}.{m[1]}.{m[3]}"
    m = re.fullmatch(r"heads\.(\d+)\.(head_conv|implicit_a|implicit_m)\.(.+)", path)
    prefix = {"head_conv": "m", "implicit_a": "ia", "implicit_m": "im"}
    return None if m is None else f"{prefix[m[2]]}.{m[1]}.{m[3]}"


def orig_key_map(model: GraphNet, layout: OrigLayout) -> dict[str, str]:
    """ORIG state-dict key -> our key, for every tensor of ``model`` that ``layout`` places."""
    v7 = model.family == "anchor"
    result = {}
    for key in model.state_dict():
        _, row, path = key.split(".", 2)
        module = model.model[row]
        if isinstance(module, (DFLHead, IDetectHead)):
            if int(row) not in layout.heads:
                continue
            orig_row, box, cls = layout.heads[int(row)]
            orig_path = _orig_head_path(module, path, box, cls)
        else:
            orig_row = layout.orig_row(int(row))
            orig_path = None if orig_row is None else _orig_block_path(module, path.split("."), v7)
        if orig_path is not None:
            result[f"model.{orig_row}.{orig_path}"] = key
    return result


def _readings(model: GraphNet) -> dict[str, Callable[[str], str | None]]:
    """Each key scheme as a function file key -> our key (None: not part of this scheme)."""
    readings: dict[str, Callable[[str], str | None]] = {
        "this repo (model.{row}.*)": lambda k: k,
        "MIT release ({row}.*)": lambda k: f"model.{k}",
        "Lightning (model.model.{row}.*)": lambda k: k[len("model."):] if k.startswith("model.model.") else None,
    }
    for kind, layout in ORIG_LAYOUTS.get(model.name, {}).items():
        readings[f"ORIG {kind}"] = orig_key_map(model, layout).get
    return readings


def _listing(items: list[str], limit: int, sep: str) -> str:
    more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def load_official_state_dict(model: GraphNet, state_dict_or_path: dict | str | os.PathLike,
                             ) -> tuple[list[str], list[str]]:
    """Copy the tensors of an official weight file (or state dict) into ``model``, in place.

    Returns (loaded, skipped): the model's state-dict names that were copied; and what was not
    used: model names whose shape differs or that the file lacks, plus file keys (file naming)
    with no place in the model (e.g. AUX weights when the model was built with aux=False).
    The DFL constants are dropped silently.

    Raises CheckpointError for an unreadable file (utils.checkpoint.load_checkpoint).
    """
    state = state_dict_or_path
    source = "state dict"
    if isinstance(state, (str, os.PathLike)):
        source = str(state)
        state = load_checkpoint(state, required=())
    if isinstance(state.get("state_dict"), dict):  # Lightning checkpoint
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if isinstance(v, Tensor) and not _CONSTANT.search(k)}
    own = model.state_dict()
    scores = {}
    for scheme, read in _readings(model).items():
        mapped = {k: read(k) for k in state}
        scores[scheme] = (sum(1 for v in mapped.values() if v in own), mapped)
    scheme = max(scores, key=lambda s: scores[s][0])
    mapped = scores[scheme][1]

    loaded, mismatched, unused = [], {}, []
    with torch.no_grad():
        for file_key, key in mapped.items():
            value = state[file_key]
            if key not in own:
                unused.append(file_key)
            elif own[key].shape != value.shape:
                mismatched[key] = f"{key}: file {list(value.shape)} vs model {list(own[key].shape)}"
            else:
                own[key].copy_(value)
                loaded.append(key)
    done = set(loaded) | set(mismatched)
    missing = [k for k in own if k not in done and not k.endswith(_OWN_CONSTANT)]
    if mismatched or missing:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape (e.g. another class count): "
                         + _listing(list(mismatched.values()), 200, "; "))
        if missing:
            parts.append(f"{len(missing)} absent from the file: " + _listing(missing, 20, ", "))
        logger.warning(f"official weights ({source}, {scheme} keys) into {model.name}: loaded {len(loaded)} "
                       f"tensors; left at their initial values " + " | ".join(parts))
    if unused:
        logger.info(f"official weights ({source}): {len(unused)} tensors have no place in {model.name} "
                    f"(aux={model.has_aux}), e.g. {unused[0]}")
    return loaded, [*mismatched, *missing, *unused]
