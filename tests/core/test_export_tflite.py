"""TFLite export (core/export_tflite.py) and the LiteRT runtime model (core/runtime_tflite.py).

The .tflite files must compute what the ONNX graph computes (onnxruntime is the reference): FP32
to float round-off, FP16 to FP16 weight rounding, INT8 roughly; the XNNPACK graph rewrite must
leave the ONNX outputs bit-identical; the float files must run wholly inside XNNPACK.
Two conversions (v9-t and the simple YOLO at 64 px) are shared by the tests of this file.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import BCCD

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2tf")
pytest.importorskip("tensorflow")

import onnx
from onnx import TensorProto, helper, numpy_helper

from configs.base_config import BaseConfig, ConfigError
from core.deploy.export import export_onnx
from core.deploy.onnx_rewrite import check_same_outputs, rewrite_for_xnnpack
from core.deploy.runtime import load_runtime_model
from core.deploy.runtime_tflite import (
    TFLiteModel,
    litert_interpreter,
    ops_details,
    xnnpack_delegation,
)
from core.deploy.tflite import calibration_images, convert_onnx_to_tflite
from core.deploy.wire import decode_output0
from datasets.loaders import PilLoader
from datasets.transforms import PAD_VALUE, letterbox
from models import build_model
from utils.checkpoint import CheckpointError

IMG = 64
HW = (IMG, IMG)
NAMES = ["RBC", "WBC", "Platelets"]
# XNNPACK operators the float files may hold; RESIZE_NEAREST_NEIGHBOR, PADV2, BATCH_MATMUL, GATHER and
# CONV_3D (what upsampling, -inf pool padding and a naive DFL would give) are not among them.
FLOAT_OPS = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE", "EXP",
             "FULLY_CONNECTED", "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D", "MINIMUM", "MUL", "PAD", "RESHAPE",
             "SOFTMAX", "STRIDED_SLICE", "SUB", "TRANSPOSE"}


def small_cfg(name: str) -> BaseConfig:
    cfg = BaseConfig()
    cfg.name = f"t_{name}"
    cfg.data.root = str(BCCD)
    cfg.data.class_names = list(NAMES)
    cfg.data.img_size = IMG
    cfg.model.name, cfg.model.backbone, cfg.model.channel_sparsity = name, "resnet18", 0.25
    return cfg


def random_model(cfg: BaseConfig, seed: int = 0) -> torch.nn.Module:
    """Seeded weights with non-trivial BatchNorm statistics, so boxes and scores vary over the image."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            # The score logits start at the class prior (scores ~1e-3): spread them over (0, 1).
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.out_channels == 3:  # v9-t classes
                m.bias.zero_()
                m.weight.mul_(10.0)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.out_channels == 24:
                m.bias.zero_()  # anchor head: 3 anchors x (4 box, objectness, 3 classes)
                m.weight.view(3, 8, *m.weight.shape[1:])[:, 4:].mul_(10.0)
    return model


def write_metadata(folder: Path, cfg: BaseConfig) -> None:
    meta = {"config": cfg.to_dict(), "class_names": list(cfg.data.class_names), "category_ids": [1, 2, 3],
            "img_size": list(HW)}
    (folder / "metadata.json").write_text(json.dumps(meta))


def calib_folder(root: Path, n: int = 8) -> Path:
    """n BCCD images (val list order) copied under root, plus a file that is not an image."""
    root.mkdir(parents=True, exist_ok=True)
    for i in (BCCD / "ImageSets/Main/val.txt").read_text().split()[:n]:
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", root)
    (root / "notes.txt").write_text("not an image")
    return root


def onnx_output(path: Path, images: np.ndarray) -> np.ndarray:
    """output0 of the ONNX file for NCHW images, one image at a time (the file has batch 1)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["output0"], {"images": images[i:i + 1]})[0] for i in range(len(images))])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{"v9-t": ..., "yolo": ...}: dir, onnx path, tflite files, cfg, calibration images, seconds."""
    out = {}
    calib_dir = calib_folder(tmp_path_factory.mktemp("calib"))
    for name, kinds in (("v9-t", ["fp32", "int8"]), ("yolo", ["saved_model", "fp32", "fp16"])):
        cfg = small_cfg(name)
        d = tmp_path_factory.mktemp(name)
        onnx_path = export_onnx(random_model(cfg), d / "model.onnx", HW, dynamic=False)
        calib = calibration_images(cfg, str(calib_dir), 8, HW)
        t0 = time.perf_counter()
        files = convert_onnx_to_tflite(onnx_path, d, kinds, calib if "int8" in kinds else None)
        seconds = time.perf_counter() - t0
        write_metadata(d, cfg)
        out[name] = {"dir": d, "onnx": onnx_path, "files": files, "cfg": cfg, "calib": calib, "seconds": seconds}
    print(f"conversion seconds: v9-t {out['v9-t']['seconds']:.1f}, yolo {out['yolo']['seconds']:.1f}")
    return out


def run_both(entry: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(onnxruntime output0, TFLiteModel output0) on the calibration images, batch of 3."""
    nchw = np.ascontiguousarray(entry["calib"][:3].transpose(0, 3, 1, 2))
    model = TFLiteModel(entry["files"][kind])
    return onnx_output(entry["onnx"], nchw), model(torch.from_numpy(nchw)).numpy()


def test_files_have_stable_names(converted):
    v9, yolo = converted["v9-t"], converted["yolo"]
    assert v9["files"] == {"fp32": v9["dir"] / "model_fp32.tflite", "int8": v9["dir"] / "model_int8.tflite"}
    assert yolo["files"] == {"saved_model": yolo["dir"] / "saved_model", "fp32": yolo["dir"] / "model_fp32.tflite",
                             "fp16": yolo["dir"] / "model_fp16.tflite"}
    assert (yolo["dir"] / "saved_model" / "saved_model.pb").is_file()
    for d in (v9["dir"], yolo["dir"]):
        assert not list(d.glob("*.tmp")) and not (d / ".onnx2tf_work").exists()


@pytest.mark.parametrize("name", ["v9-t", "yolo"])
def test_fp32_matches_onnxruntime(converted, name):
    """Boxes within 1e-3 input pixels, scores within 1e-5 (measured: ~1e-5 px and ~1e-7)."""
    ref, out = run_both(converted[name], "fp32")
    nc = len(NAMES)
    assert out.shape == ref.shape and out.shape[:2] == (3, 4 + nc) and out.dtype == np.float32
    assert ref[:, 4:].std() > 0.02  # the scores vary: the comparison is not between constants
    assert np.abs(out[:, :4] - ref[:, :4]).max() < 1e-3
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 1e-5


def test_fp16_close_to_onnxruntime(converted):
    """FP16 weights: boxes within 0.2% of the input side, scores within 1e-3."""
    ref, out = run_both(converted["yolo"], "fp16")
    assert out.shape == ref.shape
    assert np.abs(out[:, :4] - ref[:, :4]).max() < 2e-3 * IMG
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 1e-3


def test_int8_runs_and_follows_onnxruntime(converted):
    entry = converted["v9-t"]
    ref, out = run_both(entry, "int8")
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and (out[:, 4:] >= 0).all() and (out[:, 4:] <= 1).all()
    # The decode stays float: scores keep their spread instead of collapsing to a few INT8 levels.
    assert len(np.unique(out[:, 4:])) > 100
    assert np.corrcoef(out[:, 4:].ravel(), ref[:, 4:].ravel())[0, 1] > 0.8
    assert np.corrcoef(out[:, :4].ravel(), ref[:, :4].ravel())[0, 1] > 0.9
    it = litert_interpreter(entry["files"]["int8"], delegate=False)
    conv_weights = [it.get_tensor_details()[int(op["inputs"][1])]["dtype"] for op in ops_details(it)
                    if op["op_name"] == "CONV_2D"]
    assert conv_weights and all(dt == np.int8 for dt in conv_weights)
    fc = [op for op in ops_details(it) if op["op_name"] == "FULLY_CONNECTED"]  # the DFL expectation
    assert len(fc) == 1 and it.get_tensor_details()[int(fc[0]["outputs"][0])]["dtype"] == np.float32


@pytest.mark.parametrize("name", ["v9-t", "yolo"])
def test_float_graph_runs_wholly_in_xnnpack(converted, name):
    report = xnnpack_delegation(converted[name]["files"]["fp32"])
    assert report["partitions"] == 1 and report["not_delegated"] == []
    assert set(report["ops"]) <= FLOAT_OPS and "DEPTH_TO_SPACE" in report["ops"]
    if name == "v9-t":
        assert report["ops"].count("FULLY_CONNECTED") == 1  # the DFL MatMul, no BATCH_MATMUL / GATHER


def test_saved_model_matches_tflite(converted):
    import tensorflow as tf
    entry = converted["yolo"]
    signature = tf.saved_model.load(str(entry["files"]["saved_model"])).signatures["serving_default"]
    x = entry["calib"][:1]
    out = signature(images=tf.constant(x))["output0"].numpy()
    _, tfl = run_both(entry, "fp32")
    assert out.shape == tfl[:1].shape and np.abs(out - tfl[:1]).max() < 1e-3


# -- the XNNPACK rewrite of the ONNX graph ----------------------------------------------------------
def pool_and_upsample_graph(h: int, w: int) -> onnx.ModelProto:
    """images [1, 3, h, w] -> MaxPool k3 s2 p1 -> nearest x2 (scales) -> nearest x3 (sizes) -> MaxPool
    k5 s1 p2 ("SAME", kept) -> linear x2 (kept) -> output0."""
    h2, w2 = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales2"),
             numpy_helper.from_array(np.array([1, 3, 6 * h2, 6 * w2], np.int64), "sizes3"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales_lin")]
    nearest = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    nodes = [helper.make_node("MaxPool", ["images"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Resize", ["p", "", "scales2"], ["u2"], **nearest),
             helper.make_node("Resize", ["u2", "", "", "sizes3"], ["u3"], **nearest),
             helper.make_node("MaxPool", ["u3"], ["q"], kernel_shape=[5, 5], pads=[2] * 4),
             helper.make_node("Resize", ["q", "", "scales_lin"], ["output0"], mode="linear")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("hw, edge_padded", [((8, 10), 1), ((9, 8), 1), ((9, 7), 0)])
def test_rewrite_is_exact_on_pools_and_upsampling(hw, edge_padded):
    """Negative inputs (a -inf pad differs from a zero pad there), odd and even sizes; k3 s2 p1 on odd
    sides is TensorFlow's "SAME" and stays."""
    proto = pool_and_upsample_graph(*hw)
    new, counts = rewrite_for_xnnpack(proto)
    assert counts == {"resize_nearest": 2, "maxpool_padding": edge_padded}
    ops = [n.op_type for n in new.graph.node]
    assert ops.count("Resize") == 1 and ops.count("DepthToSpace") == 2 and ops.count("MaxPool") == 2
    assert ops.count("Concat") == 2 + 2 * edge_padded  # the copies of each upsampling, the edges of each axis
    x = np.random.default_rng(1).standard_normal((1, 3, *hw)).astype(np.float32) - 3.0
    runs = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
            .run(["output0"], {"images": x})[0] for p in (proto, new)]
    assert runs[0].shape == (1, 3, 12 * ((hw[0] - 1) // 2 + 1), 12 * ((hw[1] - 1) // 2 + 1))
    assert np.array_equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["v9-t", "yolo"])
def test_rewrite_keeps_model_outputs(converted, name):
    import onnxslim
    proto = onnxslim.slim(onnx.load(str(converted[name]["onnx"])))
    new, counts = rewrite_for_xnnpack(proto)
    assert counts == {"resize_nearest": 2, "maxpool_padding": int(name == "yolo")}
    assert "Resize" not in {n.op_type for n in new.graph.node}
    check_same_outputs(proto, new)  # raises unless output0 is bit-identical
    broken = onnx.ModelProto()
    broken.CopyFrom(new)
    d2s = next(n for n in broken.graph.node if n.op_type == "DepthToSpace")
    next(a for a in d2s.attribute if a.name == "mode").s = b"CRD"  # another channel order: must be noticed
    with pytest.raises(RuntimeError, match="changed output0"):
        check_same_outputs(proto, broken)


# -- calibration images -----------------------------------------------------------------------------
def test_calibration_images_are_letterboxed_like_val(tmp_path):
    folder = calib_folder(tmp_path / "imgs", n=4)
    cfg = small_cfg("yolo")
    calib = calibration_images(cfg, str(folder), 3, HW)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")[:3]
    expected = np.stack([letterbox(PilLoader().load(f), IMG)[0] for f in files]).astype(np.float32) / 255
    assert calib.shape == (3, IMG, IMG, 3) and calib.dtype == np.float32
    assert np.array_equal(calib, expected)
    assert np.allclose(calib[:, 0], PAD_VALUE / 255)  # BCCD is 640x480: grey rows above and below
    train = calibration_images(cfg, "", 2, HW)  # "" = the train split of data.root, in its order
    first = (BCCD / "ImageSets/Main/train.txt").read_text().split()[0]
    assert train.shape == (2, IMG, IMG, 3)
    first_img = letterbox(PilLoader().load(BCCD / "JPEGImages" / f"{first}.jpg"), IMG)[0]
    assert np.array_equal(train[0], first_img.astype(np.float32) / 255)


def test_calibration_errors_name_the_folder(tmp_path):
    cfg = small_cfg("yolo")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="calib_dir=.*empty.*no images"):
        calibration_images(cfg, str(tmp_path / "empty"), 4, HW)
    with pytest.raises(ConfigError, match="calib_dir=.*missing.*not a folder"):
        calibration_images(cfg, str(tmp_path / "missing"), 4, HW)


# -- errors -----------------------------------------------------------------------------------------
def test_missing_dependency_and_bad_requests(tmp_path, monkeypatch):
    onnx_path = tmp_path / "m.onnx"
    onnx.save(pool_and_upsample_graph(8, 8), onnx_path)
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # "import onnx2tf" now fails
    with pytest.raises(ConfigError, match=r"'onnx2tf'.*pip install -r requirements-export.txt"):
        convert_onnx_to_tflite(onnx_path, tmp_path / "out", ["fp32"])
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="INT8 TFLite needs calibration images"):
        convert_onnx_to_tflite(onnx_path, tmp_path / "out", ["int8"])
    with pytest.raises(ConfigError, match=r"unknown \['tflite'\]; valid"):
        convert_onnx_to_tflite(onnx_path, tmp_path / "out", ["tflite"])
    assert not (tmp_path / "out").exists()


# -- the runtime model ------------------------------------------------------------------------------
def test_tflite_model_reads_metadata_and_decodes(converted, tmp_path, monkeypatch):
    entry = converted["yolo"]
    model = TFLiteModel(entry["files"]["fp32"])
    assert model.runtime == "litert" and model.img_hw == HW and model.device == torch.device("cpu")
    assert model.metadata["class_names"] == NAMES and model.metadata["config"]["data"]["img_size"] == IMG
    assert model.eval() is model and model.train() is model and model.to("cpu") is model
    assert model.num_params > 0
    x = torch.from_numpy(np.ascontiguousarray(entry["calib"][:2].transpose(0, 3, 1, 2)))
    out = model(x)
    boxes, scores = model.decode(out, HW)
    ref_boxes, ref_scores = decode_output0(out)
    assert torch.equal(boxes, ref_boxes) and torch.equal(scores, ref_scores) and boxes.shape[-1] == 4
    with pytest.raises(ValueError, match="takes images"):
        model(x[:, :, :32])
    assert isinstance(load_runtime_model(entry["files"]["fp32"]), TFLiteModel)
    with monkeypatch.context() as m:  # without ai-edge-litert, TensorFlow's interpreter runs the file
        m.setitem(sys.modules, "ai_edge_litert", None)
        m.setitem(sys.modules, "ai_edge_litert.interpreter", None)
        assert (TFLiteModel(entry["files"]["fp32"])(x) - out).abs().max() < 1e-3  # another XNNPACK build
    alone = tmp_path / "model_fp32.tflite"
    shutil.copy(entry["files"]["fp32"], alone)
    with pytest.raises(CheckpointError, match="metadata.json"):
        TFLiteModel(alone)
    meta = json.loads((entry["dir"] / "metadata.json").read_text())
    (tmp_path / "metadata.json").write_text(json.dumps({**meta, "img_size": [96, 96]}))
    with pytest.raises(CheckpointError, match=r"input size \(64, 64\) differs"):
        TFLiteModel(alone)
