"""Export of a trained detector to ONNX (and, through it, TFLite): the deployment graph and its contract.

The exported graph takes ``images`` [B, 3, H, W] float in [0, 1] (RGB, letterboxed to the
training size, as the data pipeline makes them) and returns one tensor ``output0``
[B, 4 + num_classes, anchors]: rows 0..3 are the box centre x, centre y, width and height in
input pixels, the following rows the class scores after sigmoid (for the anchor head, objectness
times class probability). This is the layout YOLOv9 deployments expect; ``decode_output0`` turns
it back into the (xyxy boxes, scores) pair that ``models.postprocess`` takes, so every runtime
shares the PyTorch path's post-processing.

Before export the network is put in its deployment form: graph networks lose the auxiliary
(PGI) branch and are re-parameterised (``models.fuse.deploy_model``), the simple YOLO is fused
in place (``fuse_model``).

The ONNX file carries what a runtime needs to be used from the file alone, as metadata
(``metadata_props``): ``config`` (the training config as JSON), ``class_names``,
``category_ids`` (both JSON lists), ``img_size`` ([H, W]), ``layout`` and ``exported_by``.
``export_model`` also writes them, parsed, as ``metadata.json`` beside the files (TFLite files
have no metadata of their own).

With ``export.nms`` a second file ``<name>_nms.onnx`` has NMS in the graph (``add_nms``). Its
outputs: ``detections`` [D, 7] float32, one row per kept box: batch index, x1, y1, x2, y2 (input
pixels), score, class; rows grouped by image, by descending score within an image; and
``output0`` as above. The NMS is class-wise, keeps scores > predict.conf_thres, suppresses at
IoU > predict.nms_iou and keeps predict.max_det boxes per image, like ``models.postprocess``
(which also keeps only the 3000 best candidates before NMS; the graph keeps all of them).
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import Tensor, nn

from configs.base_config import ConfigError
from configs.validation import MIN_OPSET
from core.deploy.wire import INSTALL_HINT, NMS_LAYOUT, MissingDependencyError, export_metadata, parse_metadata, require
from models.fuse import deploy_model, fuse_model
from models.nets.graph import GraphNet

# export.formats -> the kind core.deploy.tflite converts ("onnx" is written here).
TFLITE_KINDS = {"saved_model": "saved_model", "tflite_fp32": "fp32", "tflite_fp16": "fp16",
                "tflite_int8": "int8"}


class ExportModel(nn.Module):
    """images [B, 3, H, W] -> output0 [B, 4 + nc, N] (see module docstring) for a fixed H, W.

    The priors (cell centres, strides, anchors) of the input size are constants of the graph.
    """

    def __init__(self, net: nn.Module, img_hw: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.img_hw = (int(img_hw[0]), int(img_hw[1]))

    def forward(self, images: Tensor) -> Tensor:
        boxes, scores = self.net.decode(self.net(images), self.img_hw)
        xy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat((xy, wh, scores.to(boxes.dtype)), -1).transpose(1, 2)


def deployment_form(model: nn.Module) -> nn.Module:
    """A fused, eval-mode copy of ``model`` without training-only branches (``model`` is untouched).

    A model that already is a deployment form is returned as it is (fusing twice would fail).
    """
    model = model.eval()
    if getattr(model, "is_deployment_form", False):
        return model
    deployed = deploy_model(model) if isinstance(model, GraphNet) else fuse_model(copy.deepcopy(model))
    deployed.is_deployment_form = True
    return deployed


def replace_silu(model: nn.Module) -> int:
    """Swap every nn.SiLU of ``model`` for nn.Hardswish, in place; returns how many were swapped."""
    count = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.SiLU):
                setattr(module, name, nn.Hardswish())
                count += 1
    return count


@dataclass(frozen=True)
class GraphNms:
    """Settings of the NMS appended to the graph (``add_nms``)."""

    conf_thres: float  # keep scores > this
    iou_thres: float  # suppress a box whose IoU with a better box of its class is > this
    max_det: int  # boxes kept per image


def export_onnx(model: nn.Module, path: str | Path, img_hw: tuple[int, int], opset: int = 17,
                dynamic: bool = True, half: bool = False, metadata: dict[str, str] | None = None,
                simplify: bool = False, nms: GraphNms | None = None) -> Path:
    """Write the deployment form of ``model`` as ONNX to ``path``; returns the path.

    dynamic: the batch dimension is symbolic ("batch"); otherwise it is 1. half: FP16 weights and
    input (the graph is traced on CPU in FP16; use FP16 files with a runtime that runs FP16).
    metadata: extra ``metadata_props`` (``export_metadata``). simplify: ``simplify_onnx``.
    nms: append NMS (``add_nms``; outputs ``detections`` and ``output0``).
    """
    onnx = require("onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportModel(deployment_form(model).cpu(), img_hw).eval()
    images = torch.zeros(1, 3, *img_hw)
    if half:
        wrapper, images = copy.deepcopy(wrapper).half(), images.half()
    dynamic_axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic else None
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The priors of the fixed input size become constants: intended, not a tracing hazard.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The TorchScript exporter is chosen on purpose (dynamo=False: plain tracing handles these
            # graphs); its deprecation notices would repeat on every export.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapper, (images,), str(tmp), opset_version=opset, input_names=["images"],
                              output_names=["output0"], dynamic_axes=dynamic_axes, do_constant_folding=True,
                              dynamo=False)
            shape = tuple(wrapper(images).shape)  # [1, 4 + nc, N]: the dims the tracer may leave symbolic
        proto = onnx.load(str(tmp))
        _fix_output_dims(proto, shape)
        if simplify:
            proto = simplify_onnx(proto)
        if nms is not None:
            add_nms(proto, nms)
        _set_metadata(proto, metadata or {}, nms)
        _save(proto, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure; a success has renamed it already
    return path


def _fix_output_dims(proto, shape: tuple[int, ...]) -> None:
    """Declare output0's class-row and anchor dimensions (the tracer may leave them symbolic)."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for i in (1, 2):
        dims[i].Clear()
        dims[i].dim_value = shape[i]


def _set_metadata(proto, metadata: dict[str, str], nms: GraphNms | None) -> None:
    values = dict(metadata)
    if nms is not None:
        values["nms"] = json.dumps({"conf_thres": nms.conf_thres, "iou_thres": nms.iou_thres,
                                    "max_det": nms.max_det, "layout": NMS_LAYOUT})
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in kept + list(values.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _save(proto, tmp: Path, path: Path) -> None:
    """Check, write to ``tmp``, then rename: ``path`` is never a half-written file."""
    import onnx
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def simplify_onnx(proto):
    """The graph simplified by onnxslim, or by onnxsim when onnxslim is absent (same outputs)."""
    try:
        import onnxslim
    except ImportError:
        onnxslim = None
    if onnxslim is not None:
        return onnxslim.slim(proto)
    try:
        import onnxsim
    except ImportError:
        raise MissingDependencyError("export.simplify=True needs the Python package 'onnxslim' (or "
                                     f"'onnxsim'); neither is installed: {INSTALL_HINT}, or set "
                                     "export.simplify=False") from None
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph; set export.simplify=False")
    return simplified


def add_nms(proto, nms: GraphNms) -> None:
    """Append class-wise NMS to a graph with output ``output0``, in place (module docstring).

    NonMaxSuppression (center_point_box=1 reads cx, cy, w, h) selects, per image and class, up to
    max_det boxes; a per-image TopK over the selected scores then keeps the max_det best of all
    classes. The TopK runs on a [B, K + max_det] matrix: image b's scores in its own row, -1
    elsewhere and in max_det padding columns (so k = max_det always fits); -1 marks "no box".
    """
    from onnx import TensorProto, helper, numpy_helper
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ConfigError(f"export.nms=True needs export.opset >= {MIN_OPSET} (got {opset})")
    g = proto.graph
    if [o.name for o in g.output] != ["output0"]:
        raise ValueError(f"add_nms takes a graph whose only output is output0, not {[o.name for o in g.output]}")
    consts = {"zero": 0, "one": 1, "zeros1": [0], "twos1": [2], "fours1": [4], "end1": [2**62],
              "axis1": [1], "ones1": [1], "b_and_i": [0, 2], "flat": [-1], "col": [-1, 1], "row": [1, -1],
              "max_det1": [nms.max_det]}
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), f"nms/{name}"))
    for name, value in {"iou": [nms.iou_thres], "conf": [nms.conf_thres], "minus_one": -1.0,
                        "minus_half": -0.5, "half": 0.5}.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), f"nms/{name}"))

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        g.node.append(helper.make_node(op, [f"nms/{i}" if i != "output0" else i for i in inputs],
                                       [f"nms/{output}"], name=f"nms/{output}", **attrs))
        return output

    node("Cast", ["output0"], "out", to=TensorProto.FLOAT)  # an FP16 graph gets NMS in FP32
    node("Slice", ["out", "zeros1", "fours1", "axis1"], "box_rows")  # [B, 4, N]
    node("Transpose", ["box_rows"], "boxes", perm=[0, 2, 1])  # [B, N, 4] cx, cy, w, h
    node("Slice", ["out", "fours1", "end1", "axis1"], "scores")  # [B, nc, N]
    node("NonMaxSuppression", ["boxes", "scores", "max_det1", "iou", "conf"], "selected",
         center_point_box=1)  # [K, 3]: image, class, box
    node("GatherND", ["scores", "selected"], "sel_score")  # [K]
    node("Gather", ["selected", "b_and_i"], "sel_bi", axis=1)  # [K, 2]
    node("GatherND", ["boxes", "sel_bi"], "sel_box")  # [K, 4]
    node("Gather", ["selected", "zero"], "sel_b", axis=1)  # [K]
    node("Gather", ["selected", "one"], "sel_c", axis=1)  # [K]
    # Per image, the max_det best selections of all classes.
    node("Shape", ["output0"], "shape")
    node("Gather", ["shape", "zero"], "batch")  # scalar B
    node("Range", ["zero", "batch", "one"], "images")  # [B]
    node("Reshape", ["images", "col"], "images_col")  # [B, 1]
    node("Reshape", ["sel_b", "row"], "sel_b_row")  # [1, K]
    node("Equal", ["images_col", "sel_b_row"], "own")  # [B, K]
    node("Reshape", ["sel_score", "row"], "sel_score_row")
    node("Where", ["own", "sel_score_row", "minus_one"], "per_image")  # [B, K]
    node("Reshape", ["batch", "ones1"], "batch1")  # [1]
    node("Concat", ["batch1", "max_det1"], "pad_shape", axis=0)  # [2]: B, max_det
    node("Expand", ["minus_one", "pad_shape"], "pad")  # [B, max_det]
    node("Concat", ["per_image", "pad"], "padded", axis=1)  # [B, K + max_det]
    g.node.append(helper.make_node("TopK", ["nms/padded", "nms/max_det1"], ["nms/top_v", "nms/top_i"],
                                   name="nms/topk", axis=1, largest=1, sorted=1))  # [B, max_det]
    node("Reshape", ["top_v", "flat"], "flat_v")
    node("Reshape", ["top_i", "flat"], "flat_i")
    node("Greater", ["flat_v", "minus_half"], "valid")
    node("NonZero", ["valid"], "valid_pos")  # [1, D]
    node("Reshape", ["valid_pos", "flat"], "pos")  # [D]
    node("Gather", ["flat_i", "pos"], "rows")  # [D] indices into the K selections
    node("Gather", ["flat_v", "pos"], "score")
    node("Gather", ["sel_box", "rows"], "box")  # [D, 4] cx, cy, w, h
    node("Slice", ["box", "zeros1", "twos1", "axis1"], "xy")
    node("Slice", ["box", "twos1", "fours1", "axis1"], "wh")
    node("Mul", ["wh", "half"], "half_wh")
    node("Sub", ["xy", "half_wh"], "p1")
    node("Add", ["xy", "half_wh"], "p2")
    for name in ("b", "c"):
        node("Gather", [f"sel_{name}", "rows"], f"det_{name}")
        node("Cast", [f"det_{name}"], f"det_{name}_f", to=TensorProto.FLOAT)
        node("Reshape", [f"det_{name}_f", "col"], f"det_{name}_col")
    node("Reshape", ["score", "col"], "score_col")
    g.node.append(helper.make_node("Concat", ["nms/det_b_col", "nms/p1", "nms/p2", "nms/score_col",
                                              "nms/det_c_col"], ["detections"], name="nms/detections", axis=1))
    detections = helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["num_detections", 7])
    g.output.insert(0, detections)


def write_nms_variant(src: str | Path, dst: str | Path, nms: GraphNms) -> Path:
    """Copy the ONNX file ``src`` (output ``output0``) to ``dst`` with NMS appended (``add_nms``)."""
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(str(src))
    add_nms(proto, nms)
    _set_metadata(proto, {}, nms)
    dst = Path(dst)
    _save(proto, dst.with_name(dst.name + ".tmp"), dst)
    return dst


def export_model(cfg, model: nn.Module, out_dir: str | Path) -> dict[str, Path]:
    """Write every format of ``cfg.export.formats`` for ``model`` (input ``cfg.data.img_size``) into out_dir.

    Returns {kind: path}: "onnx" (``<name>.onnx``, ``<name>_fp16.onnx`` with export.half),
    "onnx_nms" (export.nms), "onnx_static" (the batch-1 FP32 graph the TFLite converter reads,
    when "onnx" is not already that), "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8",
    and "metadata" (``metadata.json``: the parsed metadata, for files without their own).
    ``model`` itself is left as it was. The config is validated first (export.formats, opset ...).
    """
    e = cfg.validate().export
    require("onnx", "ONNX export")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img_hw = (cfg.data.img_size, cfg.data.img_size)
    metadata = export_metadata(cfg, img_hw)
    net = deployment_form(model)
    if e.hardswish:
        n = replace_silu(net)
        if n:
            logger.warning(f"export.hardswish=True: {n} SiLU activations replaced by HardSwish; the exported "
                           "model computes other outputs than the trained one (fine-tune or re-validate it)")
        else:
            logger.info("export.hardswish=True: the model has no SiLU activation; nothing replaced")
    files: dict[str, Path] = {}
    if "onnx" in e.formats:
        stem = cfg.name + ("_fp16" if e.half else "")
        files["onnx"] = export_onnx(net, out_dir / f"{stem}.onnx", img_hw, e.opset, e.dynamic, e.half,
                                    metadata, simplify=e.simplify)
        if e.nms:
            p = cfg.predict
            files["onnx_nms"] = write_nms_variant(files["onnx"], out_dir / f"{stem}_nms.onnx",
                                                  GraphNms(p.conf_thres, p.nms_iou, p.max_det))
    kinds = [TFLITE_KINDS[f] for f in e.formats if f in TFLITE_KINDS]
    if kinds:
        files.update(_export_tflite(cfg, net, out_dir, kinds, files.get("onnx"), metadata))
    files["metadata"] = out_dir / "metadata.json"
    from utils.files import write_json_atomic
    write_json_atomic(files["metadata"], parse_metadata(metadata))
    return files


def _export_tflite(cfg, net: nn.Module, out_dir: Path, kinds: list[str], onnx_path: Path | None,
                   metadata: dict[str, str]) -> dict[str, Path]:
    """TFLite / SavedModel files, converted from a batch-1 FP32 ONNX graph without NMS."""
    from core.deploy.tflite import calibration_images, convert_onnx_to_tflite
    e, img_hw, files = cfg.export, (cfg.data.img_size, cfg.data.img_size), {}
    static = onnx_path if onnx_path is not None and not e.dynamic and not e.half else None
    if static is None:
        static = export_onnx(net, out_dir / f"{cfg.name}_static.onnx", img_hw, e.opset, dynamic=False,
                             half=False, metadata=metadata, simplify=e.simplify)
        files["onnx_static"] = static
    calib = calibration_images(cfg, e.calib_dir, e.calib_count, img_hw) if "int8" in kinds else None
    for kind, path in convert_onnx_to_tflite(static, out_dir, kinds, calib).items():
        files[kind if kind == "saved_model" else f"tflite_{kind}"] = Path(path)
    return files
