"""model.anchors="auto": fitted before the model is built, stored in the checkpoint, the configured
anchors kept when they fit as well, refused for the anchor-free family, used by v7 too."""
import json

import numpy as np
import pytest
from loguru import logger
from tiny_data import make_tiny_voc, tiny_overrides

from configs import load_config
from configs.base_config import ConfigError
from core.checks import validate
from core.train.anchors import box_shapes, family_anchors, resolve_anchors
from datasets import Record, RecordTable
from models import build_model
from utils.checkpoint import load_checkpoint


def records_from_shapes(wh: np.ndarray, img: int = 640) -> RecordTable:
    """One square img x img image per box of size wh, centred."""
    recs = []
    for i, (w, h) in enumerate(wh):
        x1, y1 = (img - w) / 2, (img - h) / 2
        recs.append(Record(i + 1, f"/x/{i}.jpg", (img, img), np.array([[x1, y1, x1 + w, y1 + h]], np.float32),
                           np.array([0])))
    return RecordTable.from_records(recs)


def messages_of(fn) -> list[str]:
    seen = []
    sink = logger.add(lambda m: seen.append(str(m)), level="INFO")
    try:
        fn()
    finally:
        logger.remove(sink)
    return seen


def test_fitted_anchors_replace_auto_at_the_reference_size():
    cfg = load_config("bccd_yolo_r18", ["model.anchors=auto", "data.img_size=320"])
    rng = np.random.default_rng(0)
    planted = np.array([[20, 20], [40, 30], [60, 80]], float)  # at 640 px: odd shapes the COCO anchors miss
    wh = planted[rng.integers(0, 3, 600)] * np.exp(rng.normal(0, 0.05, (600, 2)))
    records = records_from_shapes(wh)
    assert np.allclose(box_shapes(records, 320), wh / 2, atol=1e-3)  # letterboxed 640 -> 320
    seen = messages_of(lambda: resolve_anchors(cfg, records))
    assert any("configured:" in m and "fitted:" in m and "best possible recall" in m for m in seen)
    anchors = np.array(cfg.model.anchors)  # stored for anchor_ref_size (640), like configured anchors
    assert anchors.shape == (3, 3, 2) and np.isfinite(anchors).all()
    best = [np.abs(np.log(anchors.reshape(-1, 2) / p)).sum(1).min() for p in planted]
    assert max(best) < 0.15  # each planted shape has a fitted anchor close to it
    model = build_model(validate(cfg))
    assert np.allclose(np.array(model.anchors), anchors * 320 / 640, atol=1e-4)


def test_configured_anchors_are_kept_when_they_fit_as_well():
    cfg = load_config("bccd_yolo_r18", ["model.anchors=auto", "data.img_size=640"])
    own = family_anchors(cfg).reshape(-1, 2)
    rng = np.random.default_rng(1)
    wh = own[rng.integers(0, 9, 3000)] * np.exp(rng.normal(0, 0.02, (3000, 2)))  # drawn from the defaults
    seen = messages_of(lambda: resolve_anchors(cfg, records_from_shapes(wh)))
    assert any("configured anchors fit the data as well as the fitted ones: kept" in m for m in seen)
    assert cfg.model.anchors == load_config("bccd_yolo_r18").model.anchors


def test_training_stores_the_fitted_anchors_and_the_anchor_free_family_refuses_auto(tmp_path):
    from core.train import Trainer
    from utils.dist import DistInfo
    root = make_tiny_voc(tmp_path / "data", n_train=8, n_val=2)
    cfg = load_config("bccd_yolo_r18", tiny_overrides(root, **{"model.anchors": "auto", "train.epochs": 1,
                                                               "eval.plots": False}))
    cpu = DistInfo.single()
    Trainer(cfg, cpu, tmp_path / "run").fit()
    stored = load_checkpoint(tmp_path / "run" / "last.pth")["config"]["model"]["anchors"]
    assert stored != "auto" and np.array(stored).shape == (3, 3, 2) and stored == cfg.model.anchors
    # config.json (what --task compare reads) keeps the setting as given, written by the Trainer itself
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["anchors"] == "auto"
    with pytest.raises(ConfigError, match="model.anchors='auto' has no effect: model.name='v9-t'"):
        validate(load_config("bccd_v9t", ["model.anchors=auto"]))


def test_v7_builds_with_fitted_anchors_and_keeps_its_own_by_default():
    v7 = load_config("bccd_yolo_r18", ["model.name=v7", "data.class_names=['a']", "data.img_size=320"])
    own = np.array(build_model(v7).anchors)
    assert np.allclose(own, family_anchors(v7))  # model.anchors at its default: the net's own anchors
    fitted = [[[10.0, 12.0], [20.0, 22.0], [30.0, 32.0]]] * 3
    v7.model.anchors = fitted  # as resolve_anchors stores them, for anchor_ref_size 640
    assert np.allclose(np.array(build_model(v7).anchors), np.array(fitted) * 320 / 640)
