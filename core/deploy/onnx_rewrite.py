"""ONNX graph preparation for the TFLite converter: batch 1, simplified, and XNNPACK-friendly.

``prepare_onnx`` fixes the batch to 1 and simplifies the graph with onnxslim (folding the shape
arithmetic the tracer leaves); ``rewrite_for_xnnpack`` replaces two patterns that XNNPACK, the
TFLite CPU delegate, does not take by equivalent ones (nearest integer-factor ``Resize`` ->
Concat of copies + DepthToSpace; a ``MaxPool`` with non-"SAME" padding -> edge repetition and an
unpadded pool); ``check_same_outputs`` compares two graphs with onnxruntime, bit for bit.
Used by core/export_tflite.py, whose docstring explains the rewrites.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from loguru import logger

from configs.base_config import ConfigError
from core.deploy.wire import require


# -- ONNX graph preparation -------------------------------------------------------------------------
def prepare_onnx(onnx_path: Path):
    """The graph of ``onnx_path`` at batch 1, simplified and rewritten for XNNPACK (module docstring)."""
    onnx = require("onnx", "TFLite export")
    onnxslim = require("onnxslim", "TFLite export")
    proto = onnx.load(str(onnx_path))
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in inputs] != ["images"] or [o.name for o in proto.graph.output] != ["output0"]:
        raise ConfigError(f"{onnx_path}: TFLite conversion takes the graph of core/deploy/export.py (input 'images', "
                          f"output 'output0'), not inputs {[i.name for i in inputs]} / outputs "
                          f"{[o.name for o in proto.graph.output]} (an NMS variant?)")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ConfigError(f"{onnx_path}: TFLite conversion takes an FP32 graph (export.half=False)")
    for value in (inputs[0], proto.graph.output[0]):  # TFLite files have a fixed batch of 1
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    del proto.graph.value_info[:]
    for i, node in enumerate(proto.graph.node):  # TensorFlow scopes are named after them: no leading "/"
        node.name = re.sub(r"[^A-Za-z0-9_.\\/>-]", "_", node.name).lstrip("/_") or f"node{i}"
    slim = onnxslim.slim(proto)
    rewritten, counts = rewrite_for_xnnpack(slim)
    if any(counts.values()):
        check_same_outputs(slim, rewritten)
        logger.info(f"ONNX graph rewritten for XNNPACK: {counts}")
    return rewritten


def rewrite_for_xnnpack(proto) -> tuple[object, dict[str, int]]:
    """A copy of ``proto`` with nearest integer-factor Resize -> Concat + DepthToSpace and non-"SAME"
    MaxPool padding -> repeated edges (module docstring); returns (graph, {pattern: count})."""
    import onnx
    proto = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*proto.graph.value_info, *proto.graph.input, *proto.graph.output)}
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    nodes, counts = [], {"resize_nearest": 0, "maxpool_padding": 0}
    for node in proto.graph.node:
        new = None
        if node.op_type == "Resize":
            new = _resize_as_depth_to_space(node, consts, shapes.get(node.input[0]))
            counts["resize_nearest"] += new is not None
        elif node.op_type == "MaxPool":
            new = _maxpool_edge_padded(node, shapes.get(node.input[0]), proto.graph.initializer)
            counts["maxpool_padding"] += new is not None
        nodes.extend(new if new is not None else [node])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # onnx2tf reads the shapes
    onnx.checker.check_model(proto)
    return proto, counts


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _resize_as_depth_to_space(node, consts: dict, in_shape: list[int] | None) -> list | None:
    """[Concat(s*s copies, channels), DepthToSpace(s, DCR)] for a nearest Resize by an integer s on
    H and W with floor sampling (PyTorch's nearest upsampling), else None."""
    from onnx import helper
    a = _attrs(node)
    if (a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric"
            or a.get("nearest_mode") != b"floor" or not in_shape or len(in_shape) != 4 or 0 in in_shape):
        return None
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size == 4:
        factors = [float(v) for v in scales]
    elif sizes is not None and sizes.size == 4:
        factors = [int(o) / i for o, i in zip(sizes, in_shape)]
    else:
        return None
    s = factors[2]
    if factors[:2] != [1.0, 1.0] or factors[3] != s or s != int(s) or s < 2:
        return None
    s, x, name = int(s), node.input[0], node.name or node.output[0]
    return [helper.make_node("Concat", [x] * (s * s), [f"{name}/copies"], name=f"{name}/copies", axis=1),
            helper.make_node("DepthToSpace", [f"{name}/copies"], [node.output[0]], name=f"{name}/d2s",
                             blocksize=s, mode="DCR")]


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "SAME" for one spatial axis."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _maxpool_edge_padded(node, in_shape: list[int] | None, initializers) -> list | None:
    """Slice + Concat repeating the edges by the pads, then the MaxPool unpadded; None when the pads
    are TensorFlow's "SAME" (onnx2tf maps them directly) or the pool is not a plain 2D one."""
    from onnx import helper, numpy_helper
    a = _attrs(node)
    k, st = a.get("kernel_shape", []), a.get("strides", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    if (len(k) != 2 or not in_shape or len(in_shape) != 4 or 0 in in_shape or a.get("ceil_mode", 0)
            or a.get("dilations", [1, 1]) != [1, 1] or a.get("auto_pad", b"NOTSET") != b"NOTSET"
            or a.get("storage_order", 0) or len(node.output) != 1 or not any(pads)):
        return None
    if all(_same_pads(in_shape[2 + i], k[i], st[i]) == (pads[i], pads[2 + i]) for i in range(2)):
        return None
    if any(pads[i] >= k[i % 2] for i in range(4)):
        return None  # a window could then lie in the padding only: no edge value to repeat
    name, x, nodes = node.name or node.output[0], node.input[0], []
    for axis, (before, after) in ((2, (pads[0], pads[2])), (3, (pads[1], pads[3]))):
        if not before and not after:
            continue
        for edge, (lo, hi) in (("first", (0, 1)), ("last", (-1, 2**62))):
            for part, value in (("lo", lo), ("hi", hi), ("axis", axis)):
                initializers.append(numpy_helper.from_array(np.array([value], np.int64),
                                                            f"{name}/{edge}{axis}/{part}"))
            nodes.append(helper.make_node("Slice", [x] + [f"{name}/{edge}{axis}/{p}" for p in ("lo", "hi", "axis")],
                                          [f"{name}/{edge}{axis}"], name=f"{name}/{edge}{axis}"))
        parts = [f"{name}/first{axis}"] * before + [x] + [f"{name}/last{axis}"] * after
        x = f"{name}/padded{axis}"
        nodes.append(helper.make_node("Concat", parts, [x], name=x, axis=axis))
    nodes.append(helper.make_node("MaxPool", [x], list(node.output), name=name, kernel_shape=k, strides=st,
                                  pads=[0, 0, 0, 0]))
    return nodes


def check_same_outputs(before, after, seed: int = 0) -> None:
    """Run both graphs with onnxruntime (no graph optimisation) on one seeded input; raise
    RuntimeError unless ``output0`` is identical."""
    ort = require("onnxruntime", "TFLite export")
    shape = [d.dim_value for d in before.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [ort.InferenceSession(p.SerializeToString(), options, providers=["CPUExecutionProvider"])
            .run(["output0"], {"images": x})[0] for p in (before, after)]
    if not np.array_equal(*outs):
        raise RuntimeError(f"the XNNPACK rewrite changed output0 (max abs difference "
                           f"{float(np.abs(outs[0] - outs[1]).max())}): a bug of core/export_tflite.py")
