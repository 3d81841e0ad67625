"""Exported .tflite files run by the LiteRT interpreter, behind the runtime-model interface of core/deploy/wire.py.

``TFLiteModel(path)(images)`` takes images [B, 3, H, W] float in [0, 1] and returns ``output0``
[B, 4 + nc, N] float32, as the ONNX model does. The files of core/deploy/tflite.py take NHWC
[1, H, W, 3] at a fixed batch of 1 (a batch is run image by image) and keep the ONNX output
layout; their XNNPACK delegate (LiteRT's default on CPU) runs the supported operators. INT8 files
made elsewhere with integer input or output are handled through their quantisation parameters.
Class names, config and input size come from ``metadata.json`` beside the file (``--task export``
writes it; core.deploy.wire.read_export_metadata).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.deploy.wire import RuntimeModel, read_export_metadata, require


def litert_interpreter(model_path: str | Path | None = None, model_content: bytes | None = None,
                       delegate: bool = True, num_threads: int = 1):
    """An allocated interpreter: ``ai_edge_litert`` (LiteRT), else TensorFlow's ``tf.lite``.

    delegate: apply the default delegates (XNNPACK on CPU); False runs the built-in kernels only.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        tf = require("tensorflow", "running a .tflite model without ai-edge-litert")
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    resolver = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=None if model_path is None else str(model_path), model_content=model_content,
                     num_threads=num_threads, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def ops_details(it) -> list[dict]:
    """The interpreter's nodes in execution order (op_name, index, inputs, outputs); after delegation
    also the DELEGATE nodes. A private method of the interpreter: its only view of the graph."""
    return it._get_ops_details()


def xnnpack_delegation(path: Path) -> dict:
    """What the LiteRT interpreter's default XNNPACK delegate takes of ``path``:
    {"ops": operator names of the graph, "partitions": XNNPACK subgraphs,
    "not_delegated": names of the operators left to the built-in kernels}."""
    it = litert_interpreter(model_path=path, delegate=True)
    nodes = ops_details(it)
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n for n in ops for t in n["outputs"]}
    delegated_out = {int(t) for d in delegates for t in d["outputs"]}
    graph_in = {int(d["index"]) for d in it.get_input_details()}
    # Operators left out are those that make a tensor a delegate (or the graph) reads and no delegate writes.
    todo = [int(t) for d in delegates for t in d["inputs"] if t >= 0]
    todo += [int(d["index"]) for d in it.get_output_details()]
    left: dict[int, dict] = {}
    while todo:
        t = todo.pop()
        if t in delegated_out or t in graph_in or t not in producer or producer[t]["index"] in left:
            continue
        left[producer[t]["index"]] = producer[t]
        todo += [int(x) for x in producer[t]["inputs"] if x >= 0]
    return {"ops": [n["op_name"] for n in ops], "partitions": len(delegates),
            "not_delegated": [left[i]["op_name"] for i in sorted(left)]}


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """float -> the tensor's integer type through its (scale, zero point); float tensors pass."""
    if detail["dtype"] in (np.float32, np.float16):
        return x.astype(detail["dtype"], copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.float32, np.float16):
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def tflite_weight_count(it) -> int:
    """Elements of the weight and bias tensors of convolution and fully-connected operators (read
    through DEQUANTIZE for FP16 / INT8 weight storage)."""
    ops = ops_details(it)
    producer = {int(t): op for op in ops for t in op["outputs"]}
    sizes = {d["index"]: int(np.prod(d["shape"])) for d in it.get_tensor_details()}
    total = 0
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            for t in op["inputs"][1:3]:
                t = int(t)
                if t >= 0 and producer.get(t, {}).get("op_name") == "DEQUANTIZE":
                    t = int(producer[t]["inputs"][0])
                total += sizes.get(t, 0) if t >= 0 and t not in producer else 0
    return total


class TFLiteModel(RuntimeModel):
    """A .tflite file of core/export_tflite.py run by LiteRT on the CPU (module docstring).

    Attributes: path, runtime ("litert"), img_hw (H, W), metadata (dict), device (cpu),
    num_params (weights of the file's convolutions and fully-connected layers).
    """

    runtime = "litert"

    def __init__(self, path: str | Path) -> None:
        from utils.checkpoint import CheckpointError
        self.path = Path(path)
        self.metadata = read_export_metadata(self.path)  # metadata.json beside the file, or an error naming it
        try:
            self.interpreter = litert_interpreter(self.path, num_threads=torch.get_num_threads())
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: LiteRT cannot load it: {str(e).splitlines()[0]}") from None
        (self.input,), (self.output,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        shape = [int(v) for v in self.input["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise CheckpointError(f"{self.path}: input {shape} is not NHWC images [B, H, W, 3]")
        self.img_hw = (shape[1], shape[2])
        if tuple(int(v) for v in self.metadata["img_size"]) != self.img_hw:
            raise CheckpointError(f"{self.path}: input size {self.img_hw} differs from img_size "
                                  f"{self.metadata['img_size']} of its metadata.json (files of different exports?)")
        nc = len(self.metadata["class_names"])
        if len(self.output["shape"]) != 3 or self.output["shape"][1] != 4 + nc:
            raise CheckpointError(f"{self.path}: output {list(self.output['shape'])} is not output0 "
                                  f"[B, 4 + {nc}, N] for the {nc} classes of its metadata.json")
        self.dynamic_batch = int(self.input["shape_signature"][0]) == -1
        self.num_params = tflite_weight_count(self.interpreter)
        self.device = torch.device("cpu")

    def __call__(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] float in [0, 1] at the exported size -> output0 [B, 4 + nc, N] float32 (CPU)."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.img_hw:
            raise ValueError(f"{self.path} takes images [B, 3, {self.img_hw[0]}, {self.img_hw[1]}], "
                             f"got {list(images.shape)}")
        x = images.detach().cpu().float().permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
        if self.dynamic_batch:
            return torch.from_numpy(self._run(x))
        return torch.from_numpy(np.concatenate([self._run(x[i:i + 1]) for i in range(len(x))]))

    def _run(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if self.dynamic_batch and it.get_input_details()[0]["shape"][0] != len(x):
            it.resize_tensor_input(self.input["index"], [len(x), *self.input["shape"][1:]])
            it.allocate_tensors()
        it.set_tensor(self.input["index"], _quantize(np.ascontiguousarray(x), self.input))
        it.invoke()
        return _dequantize(it.get_tensor(self.output["index"]), self.output)

    def __repr__(self) -> str:
        return f"TFLiteModel({str(self.path)!r}, img_hw={self.img_hw}, {self.num_params:,} weights)"
