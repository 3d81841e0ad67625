"""ONNX export (core/deploy/export.py) and the onnxruntime model (core/deploy/runtime.py).

The exported graph must compute what the PyTorch model computes for every model family, at any
batch; its metadata must rebuild the config; NMS in the graph must keep what models.postprocess
keeps (tests/core/test_export_tasks.py runs the tasks with the files).
"""
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from configs.base_config import BaseConfig, ConfigError
from core.deploy.export import GraphNms, deployment_form, export_model, export_onnx, write_nms_variant
from core.deploy.runtime import OnnxModel, load_runtime_model
from core.deploy.wire import NMS_LAYOUT, MissingDependencyError, decode_output0, export_metadata, read_export_metadata
from models import build_model
from models.postprocess import postprocess
from utils.checkpoint import CheckpointError
from utils.model_info import count_params

IMG = 64
HW = (IMG, IMG)
NAMES = ["cat", "dog", "bird"]


def small_cfg(name: str = "yolo", backbone: str = "resnet18", **model) -> BaseConfig:
    cfg = BaseConfig()
    cfg.name = f"t_{name}"
    cfg.data.class_names = list(NAMES)
    cfg.data.img_size = IMG
    cfg.model.name, cfg.model.backbone, cfg.model.channel_sparsity = name, backbone, 0.25
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def random_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (BN folding must carry them), moderate
    enough that activations, scores and boxes keep realistic magnitudes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *HW, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def torch_outputs(model, x):
    return model.decode(model(x), HW)


FAMILIES = [("yolo", "resnet18"), ("yolo", "darknet_tiny"), ("v9-t", ""), ("gelan-t", ""), ("v7", ""),
            ("rd-9c", "")]


@pytest.mark.parametrize("name,backbone", FAMILIES, ids=[f"{n}-{b}" if b else n for n, b in FAMILIES])
def test_onnx_equals_pytorch_for_every_family_at_batch_1_and_3(tmp_path, name, backbone):
    cfg = small_cfg(name, backbone or "resnet18")
    torch.manual_seed(0)
    model = random_bn(build_model(cfg))
    path = export_onnx(model, tmp_path / "m.onnx", HW, metadata=export_metadata(cfg, HW))  # dynamic batch
    rt = OnnxModel(path)
    assert rt.runtime == "onnxruntime" and rt.img_hw == HW and rt.device == torch.device("cpu")
    x = images(3)
    all_boxes, all_scores = torch_outputs(model, x)  # the training model (aux branch, unfused) in eval
    for batch in (1, 3):
        ref_boxes, ref_scores = all_boxes[:batch], all_scores[:batch]  # eval mode: images are independent
        out0 = rt(x[:batch])
        assert out0.dtype == torch.float32 and out0.shape == (batch, 4 + len(NAMES), ref_boxes.shape[1])
        boxes, scores = rt.decode(out0, HW)
        # Random weights give boxes of up to a few hundred pixels (DFL: at most 15 strides per side);
        # the tolerance is absolute for boxes of that size.
        assert ref_boxes.abs().max() < 1000
        assert (boxes - ref_boxes).abs().max() < 1e-4
        assert (scores - ref_scores).abs().max() < 1e-5
        assert ref_scores.std() > 0 and (ref_boxes[..., 2:] - ref_boxes[..., :2]).min() >= 0


def test_fixed_batch_file_runs_larger_batches_in_chunks(tmp_path):
    cfg = small_cfg()
    model = random_bn(build_model(cfg))
    rt = OnnxModel(export_onnx(model, tmp_path / "s.onnx", HW, dynamic=False, metadata=export_metadata(cfg, HW)))
    assert rt.fixed_batch == 1
    x = images(3)
    boxes, scores = rt.decode(rt(x), HW)
    ref_boxes, ref_scores = torch_outputs(model, x)
    assert (boxes - ref_boxes).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5
    with pytest.raises(ValueError, match="takes images"):
        rt(torch.rand(1, 3, 32, 32))


def test_metadata_round_trip_rebuilds_the_config(tmp_path):
    cfg = small_cfg("yolo", "darknet_tiny")
    cfg.data.category_ids = [3, 7, 9]
    files = export_model(cfg, random_bn(build_model(cfg)), tmp_path)
    assert set(files) == {"onnx", "metadata"}
    meta = read_export_metadata(files["onnx"])
    assert meta["class_names"] == NAMES and meta["category_ids"] == [3, 7, 9] and meta["img_size"] == [IMG, IMG]
    assert BaseConfig.from_dict(meta["config"]).to_dict() == cfg.to_dict()
    assert json.loads(files["metadata"].read_text()) == meta  # metadata.json holds the same, parsed
    assert load_runtime_model(files["onnx"]).metadata == meta


def test_simplified_file_keeps_outputs_and_metadata(tmp_path):
    cfg = small_cfg()
    cfg.export.simplify = True
    model = random_bn(build_model(cfg))
    files = export_model(cfg, model, tmp_path)
    rt = OnnxModel(files["onnx"])
    assert rt.metadata["class_names"] == NAMES
    x = images(2)
    boxes, scores = rt.decode(rt(x), HW)
    ref_boxes, ref_scores = torch_outputs(model, x)
    assert (boxes - ref_boxes).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5
    assert rt.num_params == count_params(deployment_form(model))  # BN folded: weights + biases


def test_fp16_export_runs_and_agrees_loosely(tmp_path):
    import onnxruntime as ort
    cfg = small_cfg()
    cfg.export.half = cfg.export.nms = True
    cfg.predict.conf_thres = 0.0
    model = random_bn(build_model(cfg))
    files = export_model(cfg, model, tmp_path)
    assert (files["onnx"].name, files["onnx_nms"].name) == ("t_yolo_fp16.onnx", "t_yolo_fp16_nms.onnx")
    nms = ort.InferenceSession(str(files["onnx_nms"]), providers=["CPUExecutionProvider"])
    det = nms.run(["detections"], {"images": images(2).numpy().astype(np.float16)})[0]
    assert det.dtype == np.float32 and det.shape == (2 * cfg.predict.max_det, 7)  # NMS runs in FP32
    rt = OnnxModel(files["onnx"])
    assert rt.input_dtype == np.float16
    x = images(2)
    boxes, scores = rt.decode(rt(x), HW)
    ref_boxes, ref_scores = torch_outputs(model, x)
    assert boxes.dtype == torch.float32
    assert (boxes - ref_boxes).abs().max() < 0.5  # pixels, FP16 weights and activations
    assert (scores - ref_scores).abs().max() < 2e-3


def test_hardswish_replaces_silu_in_the_exported_graph(tmp_path):
    import onnx
    cfg = small_cfg(activation="silu", obj_bias_prior=0.5)
    cfg.export.hardswish = True
    model = random_bn(build_model(cfg))
    files = export_model(cfg, model, tmp_path)
    ops = {n.op_type for n in onnx.load(str(files["onnx"])).graph.node}
    assert "HardSwish" in ops
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())  # the caller's model is untouched
    swapped = deployment_form(model)
    for module in list(swapped.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.SiLU):
                setattr(module, child_name, torch.nn.Hardswish())
    x = images(2)
    rt = OnnxModel(files["onnx"])
    boxes, scores = rt.decode(rt(x), HW)
    ref_boxes, ref_scores = torch_outputs(swapped, x)
    silu_boxes, silu_scores = torch_outputs(model, x)
    assert (boxes - ref_boxes).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5
    # HardSwish changed the outputs, by far more than the equality tolerances above
    assert (boxes - silu_boxes).abs().max() > 1e-2 and (scores - silu_scores).abs().max() > 1e-4


def _sorted_detections(boxes, scores, labels):
    """Rows (label, score, x1, y1, x2, y2) in a canonical order."""
    rows = np.concatenate([np.asarray(labels, np.float64)[:, None], np.asarray(scores, np.float64)[:, None],
                           np.asarray(boxes, np.float64)], 1)
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows.reshape(0, 6)


@pytest.fixture(scope="module")
def nms_source(tmp_path_factory):
    """A random simple YOLO with spread-out scores (objectness prior 0.5) exported without NMS."""
    cfg = small_cfg(obj_bias_prior=0.5)
    torch.manual_seed(0)
    model = random_bn(build_model(cfg))
    path = export_onnx(model, tmp_path_factory.mktemp("nms") / "m.onnx", HW, metadata=export_metadata(cfg, HW))
    return path


@pytest.mark.parametrize("quantile,iou,max_det", [(0.5, 0.45, 300), (0.2, 0.6, 7), (0.9, 0.05, 300),
                                                  (1.0, 0.5, 10)])
def test_nms_in_graph_keeps_what_postprocess_keeps(nms_source, tmp_path, quantile, iou, max_det):
    import onnxruntime as ort
    x = images(3, seed=5).numpy()
    plain = ort.InferenceSession(str(nms_source), providers=["CPUExecutionProvider"])
    boxes, scores = decode_output0(torch.from_numpy(plain.run(None, {"images": x})[0]))
    conf = float(scores.quantile(quantile)) if quantile < 1 else 1.0  # 1.0: nothing passes
    path = write_nms_variant(nms_source, tmp_path / "m_nms.onnx", GraphNms(conf, iou, max_det))
    assert read_export_metadata(path)["nms"] == {"conf_thres": conf, "iou_thres": iou, "max_det": max_det,
                                                 "layout": NMS_LAYOUT}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["detections", "output0"]
    det, _ = sess.run(None, {"images": x})
    assert det.dtype == np.float32 and det.ndim == 2 and det.shape[1] == 7
    ref = postprocess(boxes, scores, conf, iou, max_det)
    assert [int((det[:, 0] == b).sum()) for b in range(3)] == [len(r["scores"]) for r in ref]
    for b, r in enumerate(ref):
        mine = det[det[:, 0] == b]
        assert np.all(np.diff(mine[:, 5]) <= 0)  # by descending score within an image
        got = _sorted_detections(mine[:, 1:5], mine[:, 5], mine[:, 6])
        want = _sorted_detections(r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy())
        np.testing.assert_allclose(got, want, atol=1e-5)
    candidates = int((scores > conf).sum())
    kept = sum(len(r["scores"]) for r in ref)
    if quantile == 1.0:
        assert det.shape == (0, 7)
    elif max_det == 7:
        assert kept == 3 * 7  # the per-image cap across classes bites
    else:
        assert 0 < kept < candidates  # NMS suppressed some boxes
        # class-wise: one anchor slot's box is kept for several classes (class-agnostic NMS would drop it)
        assert len(np.unique(det[:, :5], axis=0)) < len(det)


def test_onnx_model_runs_the_nms_file_through_output0(nms_source, tmp_path):
    path = write_nms_variant(nms_source, tmp_path / "n.onnx", GraphNms(0.1, 0.5, 50))
    x = images(2)
    a, b = OnnxModel(nms_source)(x), OnnxModel(path)(x)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="only output is output0"):
        write_nms_variant(path, tmp_path / "twice.onnx", GraphNms(0.1, 0.5, 50))


def test_bad_files_are_clear_errors(tmp_path, nms_source):
    import onnx
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(CheckpointError, match="junk.onnx: not an ONNX model"):
        OnnxModel(junk)
    foreign = onnx.load(str(nms_source))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(CheckpointError, match="foreign.onnx.*not exported by this repo's --task export"):
        load_runtime_model(tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match="model file not found"):
        OnnxModel(tmp_path / "absent.onnx")
    cfg = small_cfg()
    cfg.export.formats = ["onnx", "coreml"]
    with pytest.raises(ConfigError, match=r"unknown \['coreml'\]"):
        export_model(cfg, build_model(cfg), tmp_path / "x")


def _block_import(monkeypatch, *names):
    """Make ``import name`` fail as for an absent package (a None entry in sys.modules)."""
    for n in names:
        monkeypatch.setitem(sys.modules, n, None)


def test_absent_packages_name_themselves_and_the_requirements_file(tmp_path, nms_source, monkeypatch):
    cfg = small_cfg()
    model = build_model(cfg)
    with monkeypatch.context() as m:
        _block_import(m, "onnxruntime")
        with pytest.raises(MissingDependencyError, match=r"'onnxruntime'.*pip install -r requirements-export.txt"):
            OnnxModel(nms_source)
    with monkeypatch.context() as m:
        _block_import(m, "onnx")
        with pytest.raises(MissingDependencyError, match=r"'onnx'.*pip install -r requirements-export.txt"):
            export_onnx(model, tmp_path / "m.onnx", HW)
    with monkeypatch.context() as m:
        _block_import(m, "onnxslim", "onnxsim")
        cfg.export.simplify = True
        with pytest.raises(MissingDependencyError, match="'onnxslim' \\(or 'onnxsim'\\).*requirements-export"):
            export_model(cfg, model, tmp_path / "s")
    assert not list((tmp_path / "s").glob("*.tmp"))  # no half-written file is left behind
    assert issubclass(MissingDependencyError, ConfigError)  # main() reports it without a traceback
