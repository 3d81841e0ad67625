"""Official weight loading: MIT release / Lightning / ORIG key schemes, constants, class-count changes."""
import pytest
import torch
from loguru import logger

from models.nets import build_net
from models.official import ORIG_LAYOUTS, load_official_state_dict, orig_key_map
from utils.checkpoint import CheckpointError


@pytest.fixture
def warnings_log():
    messages = []
    handler = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(handler)


def source_model(name: str, nc: int, seed: int = 1, aux: bool = True):
    """A model whose every tensor differs from a fresh build (so a copied tensor is recognisable)."""
    torch.manual_seed(seed)
    model = build_net(name, nc, aux=aux)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point() and "anc2vec_bins" not in key:
                t.copy_(torch.rand_like(t) + 0.5)
    return model


def mit_release_dict(model) -> dict:
    """MIT release layout: bare "{row}.{path}" keys and one anc2vec constant per head level."""
    state = {k[len("model."):]: v.clone() for k, v in model.state_dict().items() if "anc2vec_bins" not in k}
    for row in (model.main_head_index, model.aux_head_index):
        if row is not None:
            for j in range(3):
                state[f"{row}.heads.{j}.anc2vec.anc2vec.weight"] = torch.arange(16.0).view(1, 16, 1, 1, 1)
    return state


def test_mit_release_with_another_class_count(warnings_log):
    src = source_model("v9-t", 80)
    dst = build_net("v9-t", 3)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    loaded, skipped = load_official_state_dict(dst, mit_release_dict(src))
    own, ref = dst.state_dict(), src.state_dict()
    for key in loaded:
        assert torch.equal(own[key], ref[key]), key
    # v9-t with nc = 3 has a narrower class branch (Cc 64 instead of 128): those layers stay as built
    class_layers = [k for k in own if ".class_conv." in k and not k.endswith("num_batches_tracked")]
    assert len(class_layers) == 2 * 3 * (2 * 5 + 2)  # 2 heads x 3 levels x (2 Conv x 5 + weight, bias)
    assert sorted(skipped) == sorted(class_layers)
    for key in class_layers:
        assert torch.equal(own[key], fresh[key])
    assert len(loaded) == len(own) - len(class_layers) - 2  # minus the two frozen DFL bin vectors
    assert not any("anc2vec" in k for k in loaded + skipped)
    assert len(warnings_log) == 1
    assert "model.22.heads.0.class_conv.2.weight: file [80, 128, 1, 1] vs model [3, 64, 1, 1]" in warnings_log[0]
    assert all(k in warnings_log[0] for k in class_layers)


def test_lightning_checkpoint_file(tmp_path, warnings_log):
    src = source_model("v9-t", 5)
    state = {f"model.model.{k}": v for k, v in mit_release_dict(src).items()}
    state["ema.model.0.conv.weight"] = torch.zeros(16, 3, 3, 3)  # Lightning extras: not ours
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    dst = build_net("v9-t", 5)
    loaded, skipped = load_official_state_dict(dst, path)
    assert skipped == ["ema.model.0.conv.weight"] and warnings_log == []
    own, ref = dst.state_dict(), src.state_dict()
    assert len(loaded) == len(own) - 2
    assert all(torch.equal(own[k], ref[k]) for k in loaded)


def test_model_without_aux_ignores_aux_weights(warnings_log):
    src = source_model("v9-t", 80)
    dst = build_net("v9-t", 80, aux=False)
    loaded, skipped = load_official_state_dict(dst, mit_release_dict(src))
    assert warnings_log == []
    assert skipped and all(int(k.split(".")[0]) in range(23, 31) for k in skipped)
    own, ref = dst.state_dict(), src.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in loaded)
    assert len(loaded) == len(own) - 1


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "v9-t.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="v9-t.pt"):
        load_official_state_dict(build_net("v9-t", 3), bad)


def _orig_dict(model, name: str, kind: str) -> tuple[dict, dict]:
    """The ORIG-keyed, FP16 state dict of ``model`` (as ORIG files store it) and the key map."""
    key_map = orig_key_map(model, ORIG_LAYOUTS[name][kind])
    own = model.state_dict()
    return {orig: own[ours].half() if own[ours].is_floating_point() else own[ours]
            for orig, ours in key_map.items()}, key_map


# ORIG names (spec section 8.1) -> our names
ORIG_NAMES = {
    ("v9-t", "gelan"): {
        "model.2.cv1.conv.weight": "model.2.conv1.conv.weight",  # ELAN1
        "model.3.cv1.conv.weight": "model.3.conv.conv.weight",  # AConv
        "model.4.cv2.0.m.2.cv1.conv2.bn.weight": "model.4.conv2.0.bottleneck.2.conv1.conv2.bn.weight",
        "model.9.cv5.conv.weight": "model.9.conv5.conv.weight",  # SPPELAN
        "model.22.cv2.1.2.bias": "model.22.heads.1.anchor_conv.2.bias",
        "model.22.cv3.2.1.bn.running_var": "model.22.heads.2.class_conv.1.bn.running_var",
    },
    ("v9-t", "dual"): {
        "model.21.cv4.conv.weight": "model.21.conv4.conv.weight",
        "model.22.cv1.conv.weight": "model.23.conv1.conv.weight",  # aux SPPELAN: ORIG 22 -> MIT 23
        "model.29.cv4.0.0.conv.weight": "model.22.heads.0.anchor_conv.0.conv.weight",  # Main group
        "model.29.cv5.2.2.weight": "model.22.heads.2.class_conv.2.weight",
        "model.29.cv2.0.0.conv.weight": "model.30.heads.0.anchor_conv.0.conv.weight",  # AUX group
    },
    ("v9-c", "dual"): {
        "model.1.conv.weight": "model.0.conv.weight",  # ORIG row 0 is Silence
        "model.4.cv1.conv.weight": "model.3.conv1.conv.weight",  # ADown
        "model.5.cv4.bn.bias": "model.4.conv4.bn.bias",
        "model.23.conv.weight": "model.23.conv.weight",  # CBLinear
        "model.38.cv4.1.1.conv.weight": "model.22.heads.1.anchor_conv.1.conv.weight",
        "model.38.cv3.0.0.conv.weight": "model.38.heads.0.class_conv.0.conv.weight",
    },
    ("v9-e", "gelan"): {
        "model.28.cv4.conv.weight": "model.28.conv4.conv.weight",
        "model.29.cv1.conv.weight": "model.36.conv1.conv.weight",  # gelan-e 29-41 = yolov9-e 36-48
        "model.41.cv2.0.m.1.cv2.conv.weight": "model.48.conv2.0.bottleneck.1.conv2.conv.weight",
        "model.42.cv2.0.2.weight": "model.49.heads.0.anchor_conv.2.weight",
    },
    ("v7", "yolov7"): {
        "model.24.conv.weight": "model.24.conv.weight",
        "model.51.cv1.conv.weight": "model.51.pre_conv.0.conv.weight",
        "model.51.cv3.conv.weight": "model.51.pre_conv.1.conv.weight",
        "model.51.cv2.bn.weight": "model.51.short_conv.bn.weight",
        "model.51.cv6.conv.weight": "model.51.post_conv.1.conv.weight",
        "model.51.cv7.conv.weight": "model.51.merge_conv.conv.weight",
        "model.102.rbr_dense.0.weight": "model.102.conv1.conv.weight",
        "model.104.rbr_1x1.1.running_var": "model.104.conv2.bn.running_var",
        "model.105.m.2.bias": "model.105.heads.2.head_conv.bias",
        "model.105.ia.0.implicit": "model.105.heads.0.implicit_a.implicit",
        "model.105.im.1.implicit": "model.105.heads.1.implicit_m.implicit",
    },
}


@pytest.mark.parametrize("name, kind", list(ORIG_NAMES))
def test_orig_keys(name, kind, warnings_log):
    aux = kind == "dual"
    torch.manual_seed(0)
    model = build_net(name, 80, aux=aux)
    state, key_map = _orig_dict(model, name, kind)
    for orig, ours in ORIG_NAMES[name, kind].items():
        assert key_map[orig] == ours
    # every tensor except the DFL bins has an ORIG name
    assert len(key_map) == len(model.state_dict()) - (2 if aux else 1) * (model.family == "dfl")
    if model.family == "dfl":  # ORIG DFL constants (dfl; dfl2 in dual heads) are dropped
        for orig_row, _, _ in ORIG_LAYOUTS[name][kind].heads.values():
            for dfl in ("dfl", "dfl2"):
                state[f"model.{orig_row}.{dfl}.conv.weight"] = torch.arange(16.0).view(1, 16, 1, 1)
    with torch.no_grad():  # wipe the model, then load the (FP16) ORIG copy of its own weights back
        for key, t in model.state_dict().items():
            if "anc2vec_bins" not in key:
                t.zero_()
    loaded, skipped = load_official_state_dict(model, state)
    assert skipped == [] and warnings_log == []
    assert len(loaded) == len(key_map)
    own = model.state_dict()
    for orig, ours in key_map.items():
        assert torch.equal(own[ours], state[orig].to(own[ours].dtype)), orig
