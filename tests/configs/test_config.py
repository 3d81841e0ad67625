"""Config loading, typed strict overrides, validation, and plain-data round trip."""
import pytest
from loguru import logger

from configs import load_config, parse_override, resolve_config_path
from configs.base_config import BaseConfig, ConfigError
from core.checks import validate


def test_default_config_is_my_config():
    cfg = load_config(None)
    assert cfg.name == "my_config" and cfg.data.class_names == ["RBC", "WBC", "Platelets"]


def test_load_by_name_and_path_give_the_same_config():
    a = load_config("bccd_yolo_r18")
    b = load_config("configs/bccd_yolo_r18.py")
    assert a.to_dict() == b.to_dict()
    assert a.model.channel_sparsity == 0.75 and a.assign.method == "auto" and a.data.img_size == 416


def test_voc_recipe():
    c = validate(load_config("voc_yolo_r18"))
    assert (c.assign.options, c.loss.box, c.loss.focal_gamma, c.optim.name, c.train.ema, c.train.epochs) == (
        {"match_iou_thres": 0.0625, "filter_by_max_iou": True}, "ciou", 3.5, "adam", True, 400)
    assert c.data.train_sets == ["VOC2007/trainval", "VOC2012/trainval"] and c.data.val_sets == ["VOC2007/test"]
    assert len(c.data.class_names) == 20


def test_typed_overrides():
    c = load_config("bccd_yolo_r18", ["assign.method=all_grid", "train.epochs=5", "optim.lr=1e-2",
                                      "aug.scale=(0.3,1.7)", "train.ema=False", "loss.level_weights=[1,1,1]",
                                      "optim.weight_decay=0"])
    assert (c.assign.method, c.train.epochs, c.optim.lr, c.aug.scale, c.train.ema) == (
        "all_grid", 5, 0.01, (0.3, 1.7), False)
    assert isinstance(c.optim.weight_decay, float)  # an int literal is accepted for a float field


@pytest.mark.parametrize("text, message", [
    ("train.epoch=3", "did you mean train.epochs"),
    ("train.epochs=3.5", "expected int"),
    ("train.ema=1", "expected bool"),
    ("data.img_size=big", "expected int"),
    ("nokey", "group.field=value"),
    ("model.anchors=3", "expected list"),
])
def test_bad_overrides_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        load_config("bccd_yolo_r18", [text])


@pytest.mark.parametrize("override, message", [
    ("assign.options={'match_iou_thres': 1.5}", r"assign.options of nearby_grid: match_iou_thres=1.5 must be"),
    ("assign.options={'topk': 3}", r"nearby_grid has no option 'topk'"),
    ("assign.options=3", r"assign.options: expected dict"),
    ("data.img_size=400", "multiple of"),
    ("loss.box='l1'", "loss.box"),
    ("data.class_names=['a','a']", "duplicates"),
    ("loss.level_weights=[1.0]", "one entry per stride"),
    ("optim.name='rmsprop'", "optim.name"),
    ("model.backbone=resnet19", "resnet18"),
    ("assign.method=best_grid", "nearby_grid"),
])
def test_validate_rejects(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config("bccd_yolo_r18", [override]))


def test_to_dict_round_trip_is_plain_data():
    c = load_config("bccd_yolo_r18", ["aug.scale=(0.4,1.6)"])
    d = c.to_dict()
    assert d["aug"]["scale"] == [0.4, 1.6]  # tuples become lists: checkpoints hold plain values
    back = BaseConfig.from_dict(d)
    assert back.to_dict() == d and back.name == "bccd_yolo_r18"


def test_unknown_config_lists_available():
    with pytest.raises(ConfigError, match="bccd_yolo_r18"):
        resolve_config_path("nope_config")


def test_subclass_ablation(tmp_path):
    f = tmp_path / "abl.py"
    f.write_text("from configs.bccd_yolo_r18 import BccdYoloR18\n"
                 "class Abl(BccdYoloR18):\n"
                 "    def __init__(self):\n"
                 "        super().__init__()\n"
                 "        self.assign.method = 'single_grid'\n")
    c = load_config(str(f))
    assert c.assign.method == "single_grid" and c.name == "abl" and c.model.backbone == "resnet18"


def test_parse_override_literals():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=word") == ("a.b", "word")
    assert parse_override("a.b='x=y'") == ("a.b", "x=y")


def test_from_dict_of_an_older_version_skips_removed_keys_with_a_warning():
    from loguru import logger
    d = load_config("bccd_yolo_r18").to_dict()
    d["aug"]["retired_knob"] = 0.3
    with pytest.raises(ConfigError, match="aug.retired_knob"):
        BaseConfig.from_dict(d)
    seen = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    try:
        back = BaseConfig.from_dict(d, strict=False)
    finally:
        logger.remove(sink)
    assert back.data.img_size == 416 and any("aug.retired_knob" in m for m in seen)


@pytest.mark.parametrize("size", ["t", "s", "m", "c", "e"])
def test_coco_v9_recipes_carry_the_original_defaults(size):
    c = validate(load_config(f"coco_v9{size}"))
    assert c.name == f"coco_v9{size}" and c.model.name == f"v9-{size}" and c.data.format == "coco"
    assert (c.assign.method, c.assign.options) == ("task_aligned", {"topk": 10, "alpha": 0.5, "beta": 6.0})
    assert (c.loss.box_weight, c.loss.cls_weight, c.loss.dfl_weight, c.loss.aux_weight) == (7.5, 0.5, 1.5, 0.25)
    assert (c.optim.name, c.optim.momentum, c.optim.nominal_batch, c.sched.name) == ("sgd", 0.937, 64, "linear")
    assert (c.aug.mosaic_prob, c.aug.mixup_prob, c.aug.close_mosaic_epochs, c.aug.scale) == (1.0, 0.15, 15, (0.1, 1.9))
    assert (c.train.epochs, c.data.img_size, len(c.data.class_names)) == (500, 640, 80)


def test_version_1_configs_migrate_their_assign_fields():
    """Checkpoints of the previous layout: flat assign.* options; changed values move into options."""
    v1 = load_config("bccd_v9t").to_dict()
    del v1["version"]
    v1["assign"] = {"method": "task_aligned", "match_iou_thres": 0.0625, "filter_by_max_iou": True,
                    "ensure_one_match": True, "topk": 13, "alpha": 0.5, "beta": 6.0, "anchor_t": 4.0}
    c = validate(BaseConfig.from_dict(v1, strict=False))
    assert (c.assign.method, c.assign.options) == ("task_aligned", {"topk": 13})
    assert c.to_dict()["version"] == 2
    newer = {**c.to_dict(), "version": 3}
    with pytest.raises(ConfigError, match="newer version of this repo \\(config version 3; this one reads up to 2"):
        BaseConfig.from_dict(newer)


def test_fields_the_family_ignores_are_refused_or_warned_once(tmp_path):
    """An ablation that changes nothing must not look like one."""
    with pytest.raises(ConfigError, match=r"loss.focal_gamma=2.0 has no effect: model.name='v9-t' does not read "
                                          r"it \(fields it ignores: .*model.channel_sparsity"):
        validate(load_config("bccd_v9t", ["loss.focal_gamma=2.0"]))
    with pytest.raises(ConfigError, match="loss.dfl_weight=3.0 has no effect: model.name='yolo'"):
        validate(load_config("bccd_yolo_r18", ["loss.dfl_weight=3.0"]))
    validate(load_config("bccd_yolo_r18", ["loss.focal_gamma=2.0"]))  # read by the anchor loss
    # A value set by the experiment class (shared with another family) is a warning, once.
    path = tmp_path / "shared.py"
    path.write_text("from configs.bccd_v9t import BccdV9T\n\n\nclass Shared(BccdV9T):\n"
                    "    def __init__(self):\n        super().__init__()\n        self.loss.focal_gamma = 1.5\n")
    seen = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    try:
        validate(load_config(str(path)))
        validate(load_config(str(path)))
        stored = BaseConfig.from_dict(load_config("bccd_v9t", ["loss.label_smoothing=0.1"]).to_dict())
        validate(stored)  # a stored config (a checkpoint's) is data: warned about, never refused
    finally:
        logger.remove(sink)
    assert sum("loss.focal_gamma=1.5 is set by Shared but model.name='v9-t' does not read it" in m
               for m in seen) == 1
    assert sum("loss.label_smoothing=0.1 is set by BaseConfig" in m for m in seen) == 1


def test_coco_recipes_state_the_category_ids():
    c = load_config("coco_v9t")
    ids = c.data.category_ids
    assert len(ids) == len(c.data.class_names) == 80 and ids == sorted(set(ids))
    assert ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and ids[-1] == 90
    assert ids[c.data.class_names.index("toothbrush")] == 90 and ids[c.data.class_names.index("person")] == 1
