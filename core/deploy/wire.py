"""The wire format of exported models, shared by the exporter and the runtimes that run its files.

``output0`` [B, 4 + nc, N]: rows 0..3 are the box centre x, centre y, width and height in input
pixels, the following rows the class scores after sigmoid (``decode_output0`` turns it back into
the (xyxy boxes, scores) pair that ``models.postprocess`` takes). The metadata an exported file
carries (ONNX ``metadata_props``, ``metadata.json`` beside TFLite files) is encoded by
``export_metadata`` and read back by ``read_export_metadata``. ``RuntimeModel`` is the call surface
every runner of exported files shares. ``require`` imports the optional packages of
requirements-export.txt with a message naming the install command.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import Tensor

from configs.base_config import ConfigError
from utils.checkpoint import CheckpointError

LAYOUT = "output0[B,4+nc,N]: cx,cy,w,h input pixels; class scores after sigmoid"
NMS_LAYOUT = "detections[D,7]: batch index, x1, y1, x2, y2 (input pixels), score, class"
INSTALL_HINT = "pip install -r requirements-export.txt"
JSON_METADATA_KEYS = ("config", "class_names", "category_ids", "img_size", "nms")
REQUIRED_METADATA = ("config", "class_names", "img_size")
RUNTIME_SUFFIXES = (".onnx", ".tflite")


class MissingDependencyError(ConfigError):
    """An optional package (requirements-export.txt) is needed and absent; the message names it."""


def require(package: str, purpose: str):
    """Import the optional ``package`` for ``purpose``; MissingDependencyError naming it when absent."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingDependencyError(f"{purpose} needs the Python package {package!r}, which cannot be "
                                     f"imported ({e}); install the export extra: {INSTALL_HINT}") from None


def is_runtime_path(path: str | Path | None) -> bool:
    """True for an exported model file (.onnx, .tflite) rather than a .pth checkpoint."""
    return path is not None and Path(path).suffix.lower() in RUNTIME_SUFFIXES


def decode_output0(output0: Tensor) -> tuple[Tensor, Tensor]:
    """output0 [B, 4 + nc, N] -> (boxes [B, N, 4] xyxy input pixels, scores [B, N, nc]), float32."""
    out = output0.float().transpose(1, 2)
    xy, half = out[..., :2], out[..., 2:4] * 0.5
    return torch.cat((xy - half, xy + half), -1), out[..., 4:]


def export_metadata(cfg, img_hw: tuple[int, int]) -> dict[str, str]:
    """The metadata stored in an exported file: the training config, class names, category ids,
    input size and layout; every value a string."""
    return {"config": json.dumps(cfg.to_dict()), "class_names": json.dumps(list(cfg.data.class_names)),
            "category_ids": json.dumps(cfg.coco_category_ids()), "img_size": json.dumps(list(img_hw)),
            "layout": LAYOUT, "exported_by": "yolo-research main.py --task export"}


def parse_metadata(raw: dict[str, str]) -> dict:
    """``metadata_props`` strings -> values (JSON keys parsed: config dict, lists, nms settings)."""
    return {k: json.loads(v) if k in JSON_METADATA_KEYS else v for k, v in raw.items()}


def load_onnx_proto(path: Path):
    """The ModelProto of ``path`` (weights included); CheckpointError for a missing or non-ONNX file."""
    onnx = require("onnx", "reading an .onnx model")
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        raise CheckpointError(f"{path}: not an ONNX model (cannot be parsed: {str(e).splitlines()[0]})") from None


def _check_metadata(path: Path, meta: dict, where: str) -> dict:
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: {where} lacks {missing}: the file was not exported by this repo's "
                              "--task export (python main.py --task export --ckpt runs/<name>/best.pth)")
    return meta


def parse_checked_metadata(path: Path, raw: dict[str, str], where: str) -> dict:
    """metadata_props strings -> parsed metadata, checked to come from --task export."""
    try:
        return _check_metadata(path, parse_metadata(raw), where)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its export metadata is not valid JSON ({e})") from None


def read_export_metadata(path: str | Path) -> dict:
    """The parsed export metadata of an exported model: {"config": dict, "class_names": list,
    "category_ids": list, "img_size": [H, W], "layout", "exported_by", optional "nms"}.

    .onnx: its ``metadata_props``; .tflite: ``metadata.json`` in the same folder. Raises
    CheckpointError naming the file when it is missing, unreadable, or not from --task export.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        proto = load_onnx_proto(path)
        return parse_checked_metadata(path, {p.key: p.value for p in proto.metadata_props}, "its metadata")
    if suffix == ".tflite":
        if not path.is_file():
            raise CheckpointError(f"{path}: model file not found")
        meta_file = path.parent / "metadata.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{path}: no metadata.json beside it; --task export writes one into the "
                                  "folder of the .tflite files: keep them together")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{meta_file}: cannot be read as JSON ({e})") from None
        return _check_metadata(path, meta, str(meta_file))
    raise CheckpointError(f"{path}: not an exported model (expected {' or '.join(RUNTIME_SUFFIXES)})")


class RuntimeModel:
    """What every exported-model runner shares: the PyTorch detector's call surface without
    parameters (``decode`` through ``decode_output0``; ``eval``, ``train``, ``to``,
    ``requires_grad_`` are no-ops). Subclasses set ``runtime``, ``path``, ``img_hw``, ``metadata``
    and define ``__call__(images) -> output0``."""

    runtime = "runtime"
    training = False
    path: Path
    img_hw: tuple[int, int]

    def decode(self, output0: Tensor, img_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """output0 -> (boxes [B, N, 4] xyxy input pixels, scores [B, N, nc]) (``decode_output0``)."""
        if tuple(img_hw) != self.img_hw:
            raise ValueError(f"{self.path} was exported for {self.img_hw} inputs, not {tuple(img_hw)}")
        return decode_output0(output0)

    def eval(self) -> RuntimeModel:
        return self

    def train(self, mode: bool = True) -> RuntimeModel:
        return self

    def to(self, *args, **kwargs) -> RuntimeModel:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> RuntimeModel:
        return self
