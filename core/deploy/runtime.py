"""Exported models (.onnx, .tflite) behind the interface val, predict and benchmark use.

A runtime model is called like the PyTorch detector: ``model(images)`` with images [B, 3, H, W]
float in [0, 1] (the same letterboxed tensors the PyTorch path gets) returns ``output0``
[B, 4 + nc, N] float32 (core/deploy/wire.py), and ``model.decode(output0, img_hw)`` gives the
(xyxy boxes, scores) pair that ``models.postprocess`` takes, so decoding and NMS are shared.
It has no parameters and runs on the CPU: ``utils.model_info.model_device`` answers "cpu" for it, and
``eval()``, ``train()``, ``to()`` are no-ops. Attributes: ``path``, ``runtime`` ("onnxruntime",
"litert"), ``img_hw``, ``metadata`` (``read_export_metadata``), ``device``, ``num_params``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from core.deploy.wire import RUNTIME_SUFFIXES, RuntimeModel, load_onnx_proto, parse_checked_metadata, require
from utils.checkpoint import CheckpointError
from utils.model_info import model_device

# ONNX operators whose initializer inputs at these positions are learned weights (not constants such as priors).
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
                  "BatchNormalization": (1, 2), "PRelu": (1,)}


def load_runtime_model(path: str | Path):
    """OnnxModel for .onnx, TFLiteModel (core.deploy.runtime_tflite) for .tflite."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".tflite":
        from core.deploy.runtime_tflite import TFLiteModel
        return TFLiteModel(path)
    raise CheckpointError(f"{path}: not an exported model (expected {' or '.join(RUNTIME_SUFFIXES)})")


def load_runtime_for(cfg, path: str | Path, device: torch.device | str):
    """The runtime model of ``path`` for cfg: its class names fill an empty ``data.class_names``, and
    it must fit cfg's class count and input size (ConfigError otherwise). Runs on the CPU."""
    from loguru import logger

    from configs.base_config import ConfigError
    model = load_runtime_model(path)
    names = list(model.metadata["class_names"])
    if not cfg.data.class_names:
        cfg.data.class_names = names
    if len(cfg.data.class_names) != len(names):
        raise ConfigError(f"{path} predicts {len(names)} classes {names}; data.class_names has "
                          f"{len(cfg.data.class_names)}: {list(cfg.data.class_names)}")
    if (cfg.data.img_size, cfg.data.img_size) != tuple(model.img_hw):
        raise ConfigError(f"{path} was exported for {model.img_hw[0]}x{model.img_hw[1]} inputs; "
                          f"data.img_size={cfg.data.img_size} does not fit it (drop the override)")
    if getattr(device, "type", device) != "cpu":
        logger.info(f"{path} runs on the CPU ({model.runtime}), not on {device}")
    logger.info(f"loaded exported model {path} ({model.runtime})")
    return model


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
        self.metadata = parse_checked_metadata(self.path, raw, "its metadata")
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
            self._num_params = onnx_weight_count(load_onnx_proto(self.path))
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
