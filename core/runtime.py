"""Exported models (.onnx, .tflite) behind the interface val, predict and benchmark use.

A runtime model is called like the PyTorch detector: ``model(images)`` with images [B, 3, H, W]
float in [0, 1] (the same letterboxed tensors the PyTorch path gets) returns ``output0``
[B, 4 + nc, N] float32 (core/export.py), and ``model.decode(output0, img_hw)`` gives the
(xyxy boxes, scores) pair that ``models.postprocess`` takes, so decoding and NMS are shared.
It has no parameters and runs on the CPU: ``model_device`` answers "cpu" for it, and
``eval()``, ``train()``, ``to()`` are no-ops. Attributes: ``path``, ``runtime`` ("onnxruntime",
"litert"), ``img_hw``, ``metadata`` (``read_export_metadata``), ``device``, ``num_params``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from core.export import decode_output0, parse_metadata, require
from utils.checkpoint import CheckpointError

RUNTIME_SUFFIXES = (".onnx", ".tflite")
REQUIRED_METADATA = ("config", "class_names", "img_size")
# ONNX operators whose initializer inputs at these positions are learned weights (not constants such as priors).
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
                  "BatchNormalization": (1, 2), "PRelu": (1,)}


def is_runtime_path(path: str | Path | None) -> bool:
    """True for an exported model file (.onnx, .tflite) rather than a .pth checkpoint."""
    return path is not None and Path(path).suffix.lower() in RUNTIME_SUFFIXES


def is_runtime_model(model) -> bool:
    """True for an OnnxModel / TFLiteModel (anything with a ``runtime`` other than PyTorch)."""
    return getattr(model, "runtime", "pytorch") != "pytorch"


def model_device(model) -> torch.device:
    """Device of a module's first parameter (or buffer); CPU for runtime models and empty modules."""
    if isinstance(model, nn.Module):
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return torch.device(getattr(model, "device", "cpu"))


def _load_onnx_proto(path: Path):
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


def _parse_checked(path: Path, raw: dict[str, str], where: str) -> dict:
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
        proto = _load_onnx_proto(path)
        return _parse_checked(path, {p.key: p.value for p in proto.metadata_props}, "its metadata")
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


def load_runtime_model(path: str | Path):
    """OnnxModel for .onnx, TFLiteModel (core.runtime_tflite) for .tflite."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".tflite":
        from core.runtime_tflite import TFLiteModel
        return TFLiteModel(path)
    raise CheckpointError(f"{path}: not an exported model (expected {' or '.join(RUNTIME_SUFFIXES)})")


def onnx_weight_count(proto) -> int:
    """Learned parameters in an ONNX graph: the elements of the initializers that weight operators
    (Conv, Gemm, MatMul weights and biases, BatchNorm scale and shift) read, directly or through
    Identity / Cast nodes, counted per use (the exporter merges equal tensors into one initializer).
    Constants such as the priors are not counted."""
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    source = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type in ("Identity", "Cast")}
    total = 0
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            if i in _WEIGHT_INPUTS.get(n.op_type, ()):
                while name in source:
                    name = source[name]
                total += sizes.get(name, 0)
    return total


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


class OnnxModel(RuntimeModel):
    """An exported .onnx file run by onnxruntime on the CPU (module docstring for the interface).

    The session uses ``torch.get_num_threads()`` intra-op threads, as the PyTorch path would. An
    FP16 file gets its input cast to FP16; a file with a fixed batch dimension is run in chunks of
    that batch. A file with NMS in the graph (export.nms) is used through its ``output0``.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path) -> None:
        ort = require("onnxruntime", "running an .onnx model")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - an unloadable file is a problem of the file
            cause = str(e).splitlines()[0] if str(e) else type(e).__name__
            what = "not an ONNX model" if "protobuf" in cause.lower() else "onnxruntime cannot load it"
            raise CheckpointError(f"{self.path}: {what} ({cause})") from None
        raw = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = _parse_checked(self.path, raw, "its metadata")
        self.img_hw = tuple(int(v) for v in self.metadata["img_size"])
        self.device = torch.device("cpu")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self._num_params: int | None = None

    @property
    def num_params(self) -> int:
        """Learned parameters of the graph (``onnx_weight_count``; reads the file with the onnx package)."""
        if self._num_params is None:
            self._num_params = onnx_weight_count(_load_onnx_proto(self.path))
        return self._num_params

    def __call__(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] float in [0, 1] at the exported size -> output0 [B, 4 + nc, N] float32 (CPU)."""
        if images.dim() != 4 or tuple(images.shape[2:]) != self.img_hw:
            raise ValueError(f"{self.path} takes images [B, 3, {self.img_hw[0]}, {self.img_hw[1]}], "
                             f"got {list(images.shape)}")
        x = np.ascontiguousarray(images.detach().cpu().numpy().astype(self.input_dtype, copy=False))
        step = self.fixed_batch or len(x)
        if len(x) % step:
            raise ValueError(f"{self.path} has a fixed batch of {step}; got a batch of {len(x)}")
        outs = [self.session.run(["output0"], {self.input_name: x[i:i + step]})[0]
                for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]).float()

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, img_hw={self.img_hw})"


@torch.no_grad()
def output_difference(model: nn.Module, runtime_model, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Max abs differences between the PyTorch model's decoded outputs and the runtime model's on a
    seeded random input at the runtime's size: {"boxes": input pixels, "scores": probability}."""
    h, w = runtime_model.img_hw
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    device = model_device(model)
    model = model.eval()
    ref_boxes, ref_scores = model.decode(model(x.to(device)), (h, w))
    boxes, scores = runtime_model.decode(runtime_model(x), (h, w))
    return {"boxes": float((boxes - ref_boxes.cpu()).abs().max()),
            "scores": float((scores - ref_scores.cpu()).abs().max())}
