"""ONNX -> TensorFlow SavedModel and TFLite (FP32, FP16, INT8) through onnx2tf; INT8 calibration images.

``convert_onnx_to_tflite`` takes the batch-1 FP32 ONNX graph of core/deploy/export.py (input ``images``
[1, 3, H, W], output ``output0`` [1, 4 + nc, N]) and writes, in ``out_dir``: ``saved_model/``
(signature ``serving_default``: ``images`` -> ``output0``), ``model_fp32.tflite``,
``model_fp16.tflite`` (FP16 weights, FP32 arithmetic) and ``model_int8.tflite`` (INT8 weights and
activations, float input and output). Every .tflite file takes ``images`` [1, H, W, 3] (NHWC)
float in [0, 1] and returns ``output0`` [1, 4 + nc, N] in the ONNX layout (checked here).

Before onnx2tf sees the graph it is fixed to batch 1, simplified with onnxslim (which folds the
shape arithmetic the tracer leaves) and two patterns that XNNPACK, the TFLite CPU delegate, does
not take are rewritten into equivalent ones (``core.deploy.onnx_rewrite.rewrite_for_xnnpack``; outputs
compared with onnxruntime, bit for bit):

- nearest ``Resize`` by an integer factor s (the neck upsampling) would become
  RESIZE_NEAREST_NEIGHBOR; it is replaced by a Concat of s*s copies along the channels and a
  DepthToSpace(s), which copy the same values (CONCATENATION and DEPTH_TO_SPACE are XNNPACK ops);
- a ``MaxPool`` whose padding is not TensorFlow's "SAME" (the ResNet stem, k3 s2 p1) would be
  padded with -inf through PADV2; its edge rows and columns are repeated instead (Slice +
  Concat) and the pool runs unpadded: exact for a max, since a window reaching into the padding
  always holds the edge value it repeats.

The DFL expectation of models/coders.py (``softmax(bins) @ arange(reg_max)``, a MatMul) needs no
rewrite: onnx2tf turns it into FULLY_CONNECTED, which XNNPACK runs. ``xnnpack_delegation`` tells
which operators a file holds and whether XNNPACK takes the whole graph.

INT8: boxes in input pixels and scores in [0, 1] share ``output0``, and one INT8 scale for both
would round every score to a few levels. The operators after the last convolutions (the decode:
reshapes, DFL softmax and FULLY_CONNECTED, box arithmetic, sigmoid, concatenation) therefore stay
FP32 (TFLite selective quantization); the network itself is INT8.

onnx2tf would download sample images to check its conversion; it gets the calibration images (or
seeded noise) instead: nothing is fetched from the network.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
from loguru import logger

from configs.base_config import ConfigError
from core.deploy.onnx_rewrite import prepare_onnx
from core.deploy.runtime_tflite import litert_interpreter, ops_details, xnnpack_delegation
from core.deploy.wire import require
from datasets.loaders import build_loader
from datasets.paths import IMAGE_SUFFIXES, is_image_name
from datasets.transforms import letterbox
from utils.files import write_bytes_atomic

KINDS = ("saved_model", "fp32", "fp16", "int8")
OUTPUT_NAMES = {"saved_model": "saved_model", "fp32": "model_fp32.tflite", "fp16": "model_fp16.tflite",
                "int8": "model_int8.tflite"}
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")


# -- calibration ------------------------------------------------------------------------------------
def calibration_images(cfg, folder: str, count: int, img_hw: tuple[int, int]) -> np.ndarray:
    """The first ``count`` images of ``folder`` (sorted by name; "" = the train images of cfg's data,
    in split order: calibration never sees the images the INT8 model is scored on), decoded by the configured loader and letterboxed like the val pipeline.

    Returns [N, H, W, 3] float32 in [0, 1] (RGB), N = min(count, images available).
    """
    if img_hw[0] != img_hw[1]:
        raise ConfigError(f"INT8 calibration letterboxes to a square input; got img_hw={tuple(img_hw)}")
    if count <= 0:
        raise ConfigError(f"export.calib_count={count} must be positive")
    if folder:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"export.calib_dir={folder!r} is not a folder")
        files = sorted(f for f in root.iterdir() if f.is_file() and is_image_name(f.name))
        if not files:
            raise ConfigError(f"export.calib_dir={folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        from datasets import build_records
        records, _ = build_records(cfg, "train")
        files = [Path(r.file) for r in records]
        if not files:
            raise ConfigError(f"export.calib_dir='' uses the train images of data.root={cfg.data.root!r}, "
                              "and there are none: set export.calib_dir to an image folder")
    loader = build_loader(cfg.data)
    images = [letterbox(loader.load(f), img_hw[0])[0] for f in files[:count]]
    logger.info(f"INT8 calibration: {len(images)} images from {folder or 'the train split'}")
    return np.stack(images).astype(np.float32) / 255.0


# -- conversion -------------------------------------------------------------------------------------
def convert_onnx_to_tflite(onnx_path: Path, out_dir: Path, kinds: list[str],
                           calib: np.ndarray | None = None) -> dict[str, Path]:
    """Convert the ONNX file to the requested ``kinds`` (module docstring) in ``out_dir``.

    kinds: any of "saved_model", "fp32", "fp16", "int8". calib: [N, H, W, 3] float32 in [0, 1]
    (``calibration_images``), required for "int8". Returns {kind: path written}.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"TFLite kinds {list(kinds)}: {'unknown ' + str(bad) if bad else 'none given'}; "
                          f"valid: {list(KINDS)}")
    if "int8" in kinds and calib is None:
        raise ConfigError("INT8 TFLite needs calibration images (calib [N, H, W, 3] float32 in [0, 1]: "
                          "export.calib_dir, export.calib_count)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before its import
    for package in ("onnx2tf", "tensorflow", "tf_keras", "onnx_graphsurgeon", "sng4onnx", "psutil"):
        require(package, "TFLite export")
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = prepare_onnx(onnx_path)
    img_hw = tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[2:])
    out_shape = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if calib is not None:
        calib = _checked_calib(calib, img_hw)
    model = _onnx2tf_model(proto, out_dir, calib)
    return _write_outputs(model, out_dir, list(kinds), calib, out_shape)


def _checked_calib(calib: np.ndarray, img_hw: tuple[int, int]) -> np.ndarray:
    calib = np.asarray(calib)
    if calib.ndim != 4 or calib.shape[1:] != (*img_hw, 3) or len(calib) == 0:
        raise ConfigError(f"calibration images must be [N, {img_hw[0]}, {img_hw[1]}, 3] (NHWC, the model's "
                          f"input size), got {list(calib.shape)}")
    if calib.min() < 0.0 or calib.max() > 1.0:
        raise ConfigError("calibration images must be float in [0, 1] (the model input), got values in "
                          f"[{calib.min():.3g}, {calib.max():.3g}]")
    return calib.astype(np.float32, copy=False)


def _onnx2tf_model(proto, out_dir: Path, calib: np.ndarray | None):
    """The tf_keras model onnx2tf builds for ``proto`` (NHWC input [1, H, W, 3])."""
    import onnx2tf
    o2t_main = importlib.import_module("onnx2tf.onnx2tf")
    # onnx2tf checks its conversion on sample images it downloads from the network; give it ours.
    sample = calib[:20] if calib is not None else np.random.default_rng(0).random((20, 64, 64, 3), np.float32)
    work = out_dir / ".onnx2tf_work"
    with contextlib.ExitStack() as stack:
        if hasattr(o2t_main, "download_test_image_data"):
            stack.enter_context(mock.patch.object(o2t_main, "download_test_image_data", lambda: sample))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        return onnx2tf.convert(onnx_graph=proto, output_folder_path=str(work), not_use_onnxsim=True,
                               disable_model_save=True, verbosity="error")


def _write_outputs(model, out_dir: Path, kinds: list[str], calib: np.ndarray | None,
                   out_shape: list[int]) -> dict[str, Path]:
    import tensorflow as tf
    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32, "images")
    func = tf.function(lambda images: {"output0": model(images)}, input_signature=[spec])
    files = {}
    if "saved_model" in kinds:
        files["saved_model"] = _write_saved_model(model, func, out_dir / OUTPUT_NAMES["saved_model"])
    concrete = func.get_concrete_function()

    def converter():
        # Without the Keras model as trackable object: the converter then skips serialising its ~700
        # layers into a temporary SavedModel (4x faster, the same flatbuffer).
        conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return conv

    fp32 = converter().convert() if {"fp32", "int8"} & set(kinds) else None  # int8 reads its graph
    build = {"fp32": lambda: fp32, "fp16": lambda: _fp16_model(converter()),
             "int8": lambda: _int8_model(converter(), fp32, calib)}
    for kind in (k for k in ("fp32", "fp16", "int8") if k in kinds):
        files[kind] = out_dir / OUTPUT_NAMES[kind]
        write_bytes_atomic(files[kind], build[kind]())
        _check_tflite(files[kind], out_shape)
    return files


def _fp16_model(converter) -> bytes:
    """FP16 weights (DEQUANTIZE to FP32 at load time), FP32 arithmetic."""
    import tensorflow as tf
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _write_saved_model(model, func, path: Path) -> Path:
    import tf_keras
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    archive = tf_keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=func)
    archive.write_out(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path


def _int8_model(converter, fp32: bytes, calib: np.ndarray) -> bytes:
    """INT8 with float input/output; the decode tail (ops after the last convolutions) stays float."""
    import tensorflow as tf

    def samples():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=decode_tail(fp32))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=samples,
                                                         debug_options=options)
    return _drop_float_round_trips(debugger.get_nondebug_quantized_model())


def _drop_float_round_trips(tflite_model: bytes) -> bytes:
    """Remove QUANTIZE -> DEQUANTIZE pairs between float tensors: the quantizer leaves one after the
    float sigmoid of the scores (a LOGISTIC has a fixed INT8 output scale of 1/256), which would
    round every score to a multiple of 1/256."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(tflite_model)
    graph = model.subgraphs[0]
    code = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    is_float = [t.type == schema.TensorType.FLOAT32 for t in graph.tensors]
    consumers: dict[int, list] = {}
    for op in graph.operators:
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(op)
    replace, dropped = {}, set()
    for q in graph.operators:
        if code[q.opcodeIndex] != schema.BuiltinOperator.QUANTIZE or not is_float[q.inputs[0]]:
            continue
        users = consumers.get(int(q.outputs[0]), [])
        if users and int(q.outputs[0]) not in graph.outputs and all(
                code[u.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE and is_float[u.outputs[0]] for u in users):
            replace.update({int(u.outputs[0]): int(q.inputs[0]) for u in users})
            dropped.update(id(op) for op in (q, *users))
    if not dropped:
        return tflite_model
    graph.operators = [op for op in graph.operators if id(op) not in dropped]
    for op in graph.operators:
        op.inputs = [replace.get(int(t), int(t)) for t in op.inputs]
    graph.outputs = [replace.get(int(t), int(t)) for t in graph.outputs]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def decode_tail(tflite_model: bytes) -> list[str]:
    """Output tensor names of the operators from which no convolution can be reached (the decode)."""
    it = litert_interpreter(model_content=tflite_model, delegate=False)
    ops = ops_details(it)
    consumers: dict[int, list[dict]] = {}
    for op in ops:
        for t in op["inputs"]:
            consumers.setdefault(int(t), []).append(op)
    feeds_conv: dict[int, bool] = {}
    for op in reversed(ops):  # TFLite keeps operators in execution order: consumers come later
        feeds_conv[op["index"]] = any(c["op_name"] in _CONV_OPS or feeds_conv[c["index"]]
                                      for t in op["outputs"] for c in consumers.get(int(t), []))
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return [names[int(op["outputs"][0])] for op in ops
            if op["op_name"] not in _CONV_OPS and not feeds_conv[op["index"]]]


def _check_tflite(path: Path, out_shape: list[int]) -> None:
    """The file must take NHWC images and return output0 in the ONNX layout [1, 4 + nc, N]."""
    it = litert_interpreter(model_path=path, delegate=False)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    if list(out["shape"]) != list(out_shape) or inp["shape"][-1] != 3:
        raise RuntimeError(f"{path}: onnx2tf gave input {list(inp['shape'])} / output {list(out['shape'])}, "
                           f"expected [1, H, W, 3] / {out_shape}")
    report = xnnpack_delegation(path)
    where = "the whole graph" if report["partitions"] == 1 and not report["not_delegated"] else (
        f"{report['partitions']} partitions, not delegated: {report['not_delegated']}")
    logger.info(f"{path.name}: {len(report['ops'])} operators ({', '.join(sorted(set(report['ops'])))}); "
                f"XNNPACK runs {where}")
