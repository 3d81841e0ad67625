"""Official weight loading, checked against the official models' own layouts.

tests/models/official_keys/ lists every key and shape of the official state dicts, made with the
official code (see its README), never from our models. Each test fills a dict with exactly one
file's keys and shapes, every tensor recognisable by value, loads it through the public entry
point, and checks where each tensor arrived against the naming facts written out below (the
official repos' module names), not against models/official.py's own key map.
"""
import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from loguru import logger

from configs import load_config
from models import build_model
from models.nets import build_net
from models.nets.v7 import V7_ANCHORS
from models.official import load_official_state_dict
from utils.checkpoint import CheckpointError

KEYS_DIR = Path(__file__).parent / "official_keys"
NETS = {"mit_v9-t": "v9-t", "mit_v9-s": "v9-s", "mit_v9-m": "v9-m", "mit_v9-c": "v9-c",
        "orig_gelan-t": "gelan-t", "orig_gelan-s": "gelan-s", "orig_gelan-m": "gelan-m",
        "orig_gelan-c": "gelan-c", "orig_gelan-e": "gelan-e",
        "orig_yolov9-t": "v9-t", "orig_yolov9-s": "v9-s", "orig_yolov9-m": "v9-m",
        "orig_yolov9-c": "v9-c", "orig_yolov9-e": "v9-e", "orig_yolov7": "v7"}
OWN_CONSTANT = "anc2vec_bins"  # our DFL projection [0..15], one per head; no file carries it
V7_ANCHOR_BUFFERS = ["model.105.anchors", "model.105.anchor_grid"]

# ORIG rows -> ours: (first ORIG row, last ORIG row, our row of the first), from the yaml files.
# Head rows: ORIG branch group -> (our head row, our branch). DDetect: cv2 box, cv3 class;
# DualDDetect: cv2/cv3 the AUX group (its first three inputs), cv4/cv5 the Main group.
BOX, CLS = "anchor_conv", "class_conv"


def _single(orig_row: int, ours: int) -> dict:
    return {orig_row: {"cv2": (ours, BOX), "cv3": (ours, CLS)}}


def _dual(orig_row: int, main: int, aux: int) -> dict:
    return {orig_row: {"cv4": (main, BOX), "cv5": (main, CLS), "cv2": (aux, BOX), "cv3": (aux, CLS)}}


SMALL_DUAL = ([(0, 21, 0), (22, 28, 23)], _dual(29, 22, 30))  # ORIG 22-28 = the AUX FPN, our 23-29
LARGE_DUAL = ([(1, 22, 0), (23, 37, 23)], _dual(38, 22, 38))  # ORIG row 0 is Silence (no tensors)
ORIG_ROWS = {
    "orig_gelan-t": ([(0, 21, 0)], _single(22, 22)), "orig_gelan-s": ([(0, 21, 0)], _single(22, 22)),
    "orig_gelan-m": ([(0, 21, 0)], _single(22, 22)), "orig_gelan-c": ([(0, 21, 0)], _single(22, 22)),
    "orig_gelan-e": ([(1, 28, 1), (29, 41, 36)], _single(42, 49)),  # gelan-e lacks our AUX rows 29-35
    "orig_yolov9-t": SMALL_DUAL, "orig_yolov9-s": SMALL_DUAL,
    "orig_yolov9-m": LARGE_DUAL, "orig_yolov9-c": LARGE_DUAL,
    "orig_yolov9-e": ([(1, 48, 1)], _dual(49, 49, 50)),
    "orig_yolov7": ([(0, 105, 0)], {}),
}
# yolov7 SPPCSPC (row 51): x1 = cv4(cv3(cv1(x))); y1 = cv6(cv5(cat(x1, pools(x1)))); cv7(cat(y1, cv2(x))).
# cv1/cv2/cv7 and cv3/cv6 have the same shapes: only the values tell a swap.
V7_SPPCSPC = {"cv1": "pre_conv.0", "cv3": "pre_conv.1", "cv4": "pre_conv.2", "cv2": "short_conv",
              "cv5": "post_conv.0", "cv6": "post_conv.1", "cv7": "merge_conv"}
V7_REPCONV = {"rbr_dense.0": "conv1.conv", "rbr_dense.1": "conv1.bn", "rbr_1x1.0": "conv2.conv",
              "rbr_1x1.1": "conv2.bn"}  # rows 102-104: (Conv2d, BatchNorm2d) branches
V7_HEAD = {"m": "head_conv", "ia": "implicit_a", "im": "implicit_m"}  # IDetect, row 105


def layout(file: str) -> dict[str, list[int]]:
    with gzip.open(KEYS_DIR / f"{file}.json.gz", "rt") as f:
        return json.load(f)


def file_state(file: str) -> dict[str, torch.Tensor]:
    """Exactly the file's keys and shapes. The i-th tensor runs from i to i + 0.5, so no two tensors
    share a value: a tensor arriving in another's place (or only in part) is seen."""
    state = {}
    for i, (key, shape) in enumerate(layout(file).items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(i)  # an int64 scalar, as BatchNorm keeps it
        else:
            state[key] = torch.linspace(i, i + 0.5, torch.Size(shape).numel()).view(shape)
    return state


def _orig_v9_path(path: str, block: str) -> str:
    """ORIG v9 names -> MIT's: AConv's cv1 is conv; elsewhere cvN is convN and RepNCSP's m is
    bottleneck (RepConvN already says conv1/conv2)."""
    if block == "AConv":
        return re.sub(r"^cv1\.", "conv.", path)
    return re.sub(r"(^|\.)m\.", r"\1bottleneck.", re.sub(r"(^|\.)cv(\d)\.", r"\1conv\2.", path))


def _orig_v7_key(row: int, path: str) -> str | None:
    if path in ("anchors", "anchor_grid"):
        return None
    first, rest = path.split(".", 1)
    if row == 105:  # "{m|ia|im}.{level}.{tensor}"
        level, tensor = rest.split(".", 1)
        return f"model.105.heads.{level}.{V7_HEAD[first]}.{tensor}"
    if row == 51:
        return f"model.51.{V7_SPPCSPC[first]}.{rest}"
    branch, tensor = path.rsplit(".", 1)
    return f"model.{row}.{V7_REPCONV.get(branch, branch)}.{tensor}"


def expected_key(file: str, key: str, model) -> str | None:
    """Our key for a file key by the naming facts above; None for the tensors that have no place in
    ours (the DFL constants and the v7 anchor buffers)."""
    if file.startswith("mit_"):  # MIT release: "{row}.{path}", our names are MIT's
        return None if ".anc2vec." in key else f"model.{key}"
    _, row, path = key.split(".", 2)
    rows, heads = ORIG_ROWS[file]
    if int(row) in heads:
        m = re.fullmatch(r"(cv\d)\.(\d)\.(.+)", path)
        if m is None:  # dfl / dfl2: the DFL projection constants
            return None
        ours, branch = heads[int(row)][m[1]]
        return f"model.{ours}.heads.{m[2]}.{branch}.{m[3]}"
    ours = next(first_ours + int(row) - first for first, last, first_ours in rows if first <= int(row) <= last)
    if file == "orig_yolov7":
        return _orig_v7_key(ours, path)
    block = type(model.model[str(ours)]).__name__ if str(ours) in model.model else "not built"
    return f"model.{ours}.{_orig_v9_path(path, block)}"


def class_layer(net: str, key: str) -> bool:
    """Whether the shape of our tensor ``key`` depends on the class count.

    DFL heads: the class branch's last 1x1 is [nc, Cc, 1, 1] and [nc]; its width Cc = max(C_P3,
    min(2 nc, 128)) changes too when the group's P3 input is narrower than 128, i.e. for t (C_P3
    64, Main and AUX): Cc = max(64, 128) = 128 at nc 80, max(64, 6) = 64 at nc 3; s/m/c/e have
    C_P3 >= 128 and keep Cc. v7 IDetect: head_conv [A (5 + nc), C, 1, 1], its bias and implicit_m
    [1, A (5 + nc), 1, 1]: 3 x 85 = 255 at nc 80, 3 x 8 = 24 at nc 3; implicit_a [1, C, 1, 1] stays.
    """
    if key.endswith("num_batches_tracked"):
        return False
    whole_branch = net.endswith("-t") and f".{CLS}." in key
    return f".{CLS}.2." in key or whole_branch or ".head_conv." in key or ".implicit_m." in key


@pytest.fixture(scope="module", params=list(NETS))
def official(request) -> tuple[str, dict]:
    """(file, its filled state dict), made once for the tests of that file (pytest groups them)."""
    return request.param, file_state(request.param)


@pytest.fixture
def log():
    """Messages logged at INFO and above, as (level, message)."""
    records = []
    handler = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="INFO")
    yield records
    logger.remove(handler)


def warnings_of(log: list) -> list[str]:
    return [msg for level, msg in log if level == "WARNING"]


def check_values(model, state: dict, placed: dict) -> None:
    """Every placed file tensor sits, value for value, in the tensor of ours that the naming facts name."""
    own = model.state_dict()
    assert [k for k, ours in placed.items() if not torch.equal(own[ours], state[k])] == []
    # our DFL constants are never overwritten (the files' own are dropped, whatever they hold)
    assert all(torch.equal(v, torch.arange(16.0)) for k, v in own.items() if k.endswith(OWN_CONSTANT))


def test_official_layout_loads_every_tensor_into_its_place(official, log):
    file, state = official
    model = build_net(NETS[file], 80)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: expected_key(file, k, model) for k in state}
    placed = {k: ours for k, ours in expected.items() if ours is not None}
    # the naming facts give each file key its own tensor of ours, of the file's shape ...
    assert [k for k, ours in placed.items() if own.get(ours) != list(state[k].shape)] == []
    assert len(set(placed.values())) == len(placed)
    # ... and cover all of ours but the DFL constants: one per head (v7: none, gelan: one, v9: two)
    uncovered = sorted(set(own) - set(placed.values()))
    heads = 0 if file == "orig_yolov7" else 1 if "gelan" in file else 2
    assert len(uncovered) == heads and all(k.endswith(OWN_CONSTANT) for k in uncovered)

    loaded, skipped = load_official_state_dict(model, state)
    assert warnings_of(log) == []
    assert sorted(loaded) == sorted(placed.values())
    check_values(model, state, placed)
    dropped = sorted(k for k, ours in expected.items() if ours is None)
    if file == "orig_yolov7":
        # the anchor buffers have no place in ours (anchors are a constructor argument): reported
        # as unused at INFO, our anchors stay the yolov7 defaults
        assert dropped == sorted(V7_ANCHOR_BUFFERS) and skipped == V7_ANCHOR_BUFFERS
        assert model.anchors == V7_ANCHORS
        assert any(level == "INFO" and "2 tensors have no place in v7" in msg for level, msg in log)
    else:
        # the DFL constants (MIT anc2vec per level; ORIG dfl, and dfl2 in the dual head) are
        # dropped silently: neither loaded nor skipped
        mit = file.startswith("mit_")
        assert len(dropped) == (3 * heads if mit else heads)  # MIT: one per level; ORIG: dfl (+ dfl2)
        assert all(".anc2vec.anc2vec." in k if mit else re.search(r"\.dfl2?\.conv\.weight$", k) for k in dropped)
        assert skipped == []


# The class layers sit in the heads, whose every key the test above checks for every file; these
# cover both class-branch cases (t: the whole branch, s: the last 1x1), MIT and ORIG single and
# dual heads, and IDetect, without loading the large nets twice.
CLASS_COUNT_FILES = ["mit_v9-t", "mit_v9-s", "orig_gelan-t", "orig_gelan-s", "orig_yolov9-t", "orig_yolov9-s",
                     "orig_yolov7"]


@pytest.mark.parametrize("official", CLASS_COUNT_FILES, indirect=True)
def test_another_class_count_leaves_only_the_class_layers(official, log):
    file, state = official
    net = NETS[file]
    model = build_net(net, 3)
    placed = {k: ours for k in state if (ours := expected_key(file, k, model)) is not None}
    classes = sorted(ours for ours in placed.values() if class_layer(net, ours))
    fresh = {k: model.state_dict()[k].clone() for k in classes}
    # per head level: t's whole class branch is 2 Conv x 5 tensors + the 1x1's 2; others the 1x1's 2;
    # v7 per level: head_conv weight, bias and implicit_m
    per_head = 3 * (12 if net.endswith("-t") else 2)
    assert len(classes) == {"orig_yolov7": 9}.get(file, per_head * (1 if "gelan" in file else 2))

    loaded, skipped = load_official_state_dict(model, state)
    own = model.state_dict()
    assert sorted(loaded) == sorted(set(placed.values()) - set(classes))
    assert sorted(skipped) == sorted(classes + (V7_ANCHOR_BUFFERS if file == "orig_yolov7" else []))
    assert [k for k in classes if not torch.equal(own[k], fresh[k])] == []  # left as built
    check_values(model, state, {k: ours for k, ours in placed.items() if ours not in classes})
    (warning,) = warnings_of(log)
    assert f"{len(classes)} with another shape" in warning and "absent from the file" not in warning
    file_shape = {ours: list(state[k].shape) for k, ours in placed.items()}
    for key in classes:
        assert f"{key}: file {file_shape[key]} vs model {list(own[key].shape)}" in warning
    for line in BY_HAND.get(file, []):
        assert line in warning


# Worked by hand. v7: 3 anchors x (5 + 3) = 24 outputs instead of 3 x (5 + 80) = 255. v9-t: Cc
# 128 -> 64 (see class_layer), the P3 input is 64 wide, the last 1x1 maps Cc to nc.
BY_HAND = {
    "orig_yolov7": ["model.105.heads.0.head_conv.weight: file [255, 256, 1, 1] vs model [24, 256, 1, 1]",
                    "model.105.heads.2.implicit_m.implicit: file [1, 255, 1, 1] vs model [1, 24, 1, 1]"],
    "mit_v9-t": ["model.22.heads.0.class_conv.0.conv.weight: file [128, 64, 3, 3] vs model [64, 64, 3, 3]",
                 "model.30.heads.2.class_conv.2.weight: file [80, 128, 1, 1] vs model [3, 64, 1, 1]"],
}


def test_model_pretrained_loads_an_official_file(tmp_path, log):
    """The config path: model.pretrained names an ORIG yolov9-t state dict saved with torch.save;
    BCCD's 3 classes leave the class layers as built and load the rest."""
    state = file_state("orig_yolov9-t")
    path = tmp_path / "yolov9-t.pt"
    torch.save(state, path)
    cfg = load_config("bccd_v9t", [f"model.pretrained={path}"])
    model = build_model(cfg)
    placed = {k: ours for k in state if (ours := expected_key("orig_yolov9-t", k, model)) is not None}
    check_values(model, state, {k: ours for k, ours in placed.items() if not class_layer("v9-t", ours)})
    (warning,) = warnings_of(log)
    assert "72 with another shape" in warning  # 2 heads x 3 levels x 12 class-branch tensors


@pytest.mark.parametrize("file, aux_keys", [
    ("mit_v9-t", r"^(2[3-9]|30)\."),  # MIT rows 23-30: the AUX FPN and head
    ("orig_yolov9-t", r"^model\.(2[2-8]\.|29\.cv[23]\.)"),  # ORIG 22-28 and the AUX group of row 29
])
def test_model_without_aux_ignores_aux_weights(file, aux_keys, log):
    model = build_net("v9-t", 80, aux=False)
    state = file_state(file)
    loaded, skipped = load_official_state_dict(model, state)
    assert warnings_of(log) == []
    assert sorted(skipped) == sorted(k for k in state if re.search(aux_keys, k) and "anc2vec" not in k)
    placed = {k: ours for k in state if (ours := expected_key(file, k, model)) is not None and k not in skipped}
    assert sorted(loaded) == sorted(placed.values()) == sorted(k for k in model.state_dict() if OWN_CONSTANT not in k)
    check_values(model, state, placed)


def test_lightning_checkpoint_file(tmp_path, log):
    """MIT training checkpoints keep the MIT keys under "model.model." in "state_dict"."""
    state = file_state("mit_v9-t")
    ckpt = {f"model.model.{k}": v for k, v in state.items()}
    ckpt["ema.model.0.conv.weight"] = torch.zeros(16, 3, 3, 3)  # Lightning extras: not ours
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": ckpt, "epoch": 3}, path)
    model = build_net("v9-t", 80)
    loaded, skipped = load_official_state_dict(model, path)
    assert skipped == ["ema.model.0.conv.weight"] and warnings_of(log) == []
    placed = {k: ours for k in state if (ours := expected_key("mit_v9-t", k, model)) is not None}
    assert sorted(loaded) == sorted(placed.values())
    check_values(model, state, placed)


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "v9-t.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="v9-t.pt"):
        load_official_state_dict(build_net("v9-t", 3), bad)
