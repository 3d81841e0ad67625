"""Rectangular evaluation batches (eval.rect): the aspect-ratio batching of ``datasets.samplers``, the
letterbox on a batch's canvas, and the dataset / loader pieces that use them on the bundled BCCD
images (640x480: one 320x416 canvas at img_size 416 instead of the 416x416 square)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from configs import load_config
from core.loaders import build_eval_loader
from datasets import build_dataloader, build_dataset
from datasets.samplers import RectBatchSampler, rect_batches
from datasets.transforms import (
    boxes_from_letterbox,
    boxes_to_letterbox,
    letterbox,
    letterbox_params,
    resized_hw,
)
from tests.core.tiny_data import make_tiny_voc
from utils.dist import DistInfo

CPU = DistInfo(0, 0, 1, torch.device("cpu"))
# (h, w) originals: landscape, portrait, square, extreme, upscaled, a tie in aspect ratio (480x640 ~ 240x320)
SHAPES = [(480, 640), (640, 480), (500, 500), (100, 900), (30, 40), (240, 320), (375, 500), (900, 120),
          (333, 333), (720, 1280), (1280, 720), (60, 80), (77, 51)]


def _noise(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


# -- rect_batches / RectBatchSampler ----------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 4, 20])
def test_rect_batches_sorted_complete_and_fitting(batch_size):
    hw = np.array(SHAPES, np.int64)
    batches, canvas = rect_batches(hw, batch_size, 416, 32)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(len(hw)))  # every index exactly once
    ratio = hw[order, 0] / hw[order, 1]
    assert (np.diff(ratio) >= 0).all()  # consecutive in the order of h / w
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1) and 0 < len(batches[-1]) <= batch_size
    assert canvas.shape == (len(batches), 2) and canvas.dtype == np.int64
    assert (canvas % 32 == 0).all() and (canvas <= 416).all()
    for b, (ch, cw) in zip(batches, canvas):
        resized = np.array([resized_hw(tuple(hw[i]), 416) for i in b])
        assert (resized[:, 0] <= ch).all() and (resized[:, 1] <= cw).all()  # each image fits its canvas
        assert ch - 32 < resized[:, 0].max() and cw - 32 < resized[:, 1].max()  # and no more than the stride


def test_rect_pad_adds_context_to_the_short_side_but_never_passes_the_square():
    hw = np.array([[480, 640], [100, 900], [500, 500], [640, 480]])
    # 312 + 0.5 stride -> 10.25 strides -> 352; 46 -> 1.94 -> 64; the long side (416) stays 416
    assert rect_batches(hw, 1, 416, 32, pad=0.5)[1].tolist() == [[64, 416], [352, 416], [416, 416], [416, 352]]
    assert rect_batches(hw, 1, 416, 32, pad=3.0)[1].tolist() == [[160, 416], [416, 416], [416, 416], [416, 416]]
    with pytest.raises(ValueError, match="pad -1"):
        rect_batches(hw, 1, 416, 32, pad=-1)


def test_rect_batches_values():
    # the tie 480x640 / 240x320 keeps index order; 640x480 BCCD-like images share a 320x416 canvas
    batches, canvas = rect_batches(np.array([[640, 480], [480, 640], [500, 500], [240, 320]]), 2, 416, 32)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0]]
    assert canvas.tolist() == [[320, 416], [416, 416]]  # 312x416 -> 320x416; 416x312 with a square: 416x416
    batches, canvas = rect_batches(np.array([[480, 640]] * 5), 2, 416, 32)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4]] and canvas.tolist() == [[320, 416]] * 3
    # extreme: 100x900 at 416 -> 46x416 -> 64x416; upscaled 30x40 at 416 -> 312x416 -> 320x416
    assert rect_batches(np.array([[100, 900]]), 1, 416, 32)[1].tolist() == [[64, 416]]
    assert rect_batches(np.array([[30, 40]]), 1, 416, 32)[1].tolist() == [[320, 416]]
    batches, canvas = rect_batches(np.zeros((0, 2), np.int64), 4, 416, 32)  # an empty split
    assert batches == [] and canvas.shape == (0, 2)


@pytest.mark.parametrize("img_size", [64, 416, 640])
def test_square_images_give_the_square(img_size):
    hw = np.array([[500, 500], [37, 37], [1024, 1024], [640, 640]])
    batches, canvas = rect_batches(hw, 3, img_size, 32)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3]]
    assert canvas.tolist() == [[img_size, img_size]] * 2


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rect_batch_sampler_ranks_cover_every_batch_once(world_size):
    batches, _ = rect_batches(np.array(SHAPES), 2, 416, 32)  # 7 batches
    per_rank = [list(RectBatchSampler(batches, r, world_size)) for r in range(world_size)]
    assert [len(RectBatchSampler(batches, r, world_size)) for r in range(world_size)] == [len(p) for p in per_rank]
    got = sorted(tuple(b) for p in per_rank for b in p)
    assert got == sorted(tuple(b.tolist()) for b in batches)  # each batch on exactly one rank, none repeated
    assert all(isinstance(i, int) for p in per_rank for b in p for i in b)
    if world_size == 2:
        assert [len(p) for p in per_rank] == [4, 3]  # no padding: rank 1 gets one batch fewer
        assert per_rank[0] == [batches[i].tolist() for i in (0, 2, 4, 6)]


def test_rect_batch_sampler_more_ranks_than_batches_and_bad_rank():
    batches, _ = rect_batches(np.array([[480, 640], [640, 480]]), 1, 416, 32)
    assert [list(RectBatchSampler(batches, r, 3)) for r in range(3)] == [[[0]], [[1]], []]
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        RectBatchSampler(batches, 2, 2)


# -- letterbox on a canvas ----------------------------------------------------------------------
@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("stride", [8, 32])
def test_rect_letterbox_is_the_square_letterbox_cropped(hw, stride):
    img = _noise(hw, seed=hw[0])
    size = 128
    canvas = tuple(int(v) for v in rect_batches(np.array([hw]), 1, size, stride)[1][0])
    sq, sq_scale, (sx, sy) = letterbox(img, size)
    rect, scale, (rx, ry) = letterbox(img, size, canvas)
    assert rect.shape == (*canvas, 3) and rect.dtype == np.uint8
    assert scale == sq_scale and (rx, ry) == letterbox_params(hw, size, canvas)[1]
    dx, dy = int(sx - rx), int(sy - ry)
    assert dx >= 0 and dy >= 0
    np.testing.assert_array_equal(rect, sq[dy:dy + canvas[0], dx:dx + canvas[1]])
    # and the crop holds the whole resized image: only grey padding is left out of it
    mask = np.ones(sq.shape[:2], bool)
    mask[dy:dy + canvas[0], dx:dx + canvas[1]] = False
    assert (sq[mask] == 114).all()


def test_square_image_rect_equals_square_exactly():
    img = _noise((300, 300), 3)
    canvas = tuple(int(v) for v in rect_batches(np.array([[300, 300]]), 1, 416, 32)[1][0])
    assert canvas == (416, 416)
    a, b = letterbox(img, 416), letterbox(img, 416, canvas)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 900), (30, 40), (77, 51), (1280, 720)])
def test_boxes_round_trip_on_rect_canvases(hw):
    rng = np.random.default_rng(hw[1])
    h, w = hw
    xy = np.sort(rng.uniform(0, 1, (20, 2, 2)), axis=1) * [w, h]  # [n, (p1, p2), (x, y)], p1 <= p2
    boxes = xy.reshape(20, 4).astype(np.float32)
    canvas = tuple(int(v) for v in rect_batches(np.array([hw]), 1, 416, 32)[1][0])
    scale, pad = letterbox_params(hw, 416, canvas)
    lb = boxes_to_letterbox(boxes, scale, pad)
    nh, nw = resized_hw(hw, 416)
    assert (lb[:, [0, 2]] >= pad[0] - 1e-3).all() and (lb[:, [2]] <= pad[0] + nw + 1e-3).all()
    assert (lb[:, [1, 3]] >= pad[1] - 1e-3).all() and (lb[:, [3]] <= pad[1] + nh + 1e-3).all()
    np.testing.assert_allclose(boxes_from_letterbox(lb, scale, pad, hw), boxes, atol=1e-4, rtol=0)
    # the same box found on the square canvas is shifted by the pad difference and maps back the same
    sq_scale, sq_pad = letterbox_params(hw, 416)
    sq = boxes_to_letterbox(boxes, sq_scale, sq_pad)
    shift = np.array([sq_pad[0] - pad[0], sq_pad[1] - pad[1]] * 2, np.float32)
    np.testing.assert_allclose(sq, lb + shift, atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes_from_letterbox(sq, sq_scale, sq_pad, hw), boxes, atol=1e-4, rtol=0)


def test_canvas_too_small_is_refused():
    with pytest.raises(ValueError, match="does not fit a 288x416 canvas"):
        letterbox_params((480, 640), 416, (288, 416))
    with pytest.raises(ValueError, match="resized to 416x312"):
        letterbox(_noise((640, 480)), 416, (416, 288))


# -- dataset and loader on BCCD (640x480) ---------------------------------------------------------
@pytest.fixture(scope="module")
def bccd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rect_bccd")
    root = make_tiny_voc(tmp / "data", n_train=2, n_val=3)
    return load_config("bccd_yolo_r18", [f"data.root={str(root)!r}", "data.num_workers=0", "eval.batch_size=2",
                                         f"data.cache_dir={str(tmp / 'cache')!r}"])


@pytest.mark.parametrize("pad, rows", [(0.0, 320), (0.5, 352)])  # eval.rect_pad: 312 rows + 0 or 20 px of context
def test_bccd_rect_batches_are_narrower_and_hold_the_square_content(bccd, pad, rows):
    bccd = copy.deepcopy(bccd)
    bccd.eval.rect_pad = pad
    rect, square = build_eval_loader(bccd, CPU, "val", rect=True), build_eval_loader(bccd, CPU, "val", rect=False)
    top = (rows - 312) // 2  # the rect canvas's top pad; the square's is 52
    assert rect.dataset.canvas_hw is not None and square.dataset.canvas_hw is None
    assert isinstance(rect.batch_sampler, RectBatchSampler)
    records = {r.image_id: r for r in rect.dataset.records}
    seen = []
    for (ri, rt, rm), (si, st, sm) in zip(rect, square, strict=True):
        assert tuple(ri.shape[1:]) == (3, rows, 416) and tuple(si.shape[1:]) == (3, 416, 416)
        assert [m["image_id"] for m in rm] == [m["image_id"] for m in sm]  # one aspect ratio: file order
        assert ri.dtype == torch.uint8
        for b, (mr, ms) in enumerate(zip(rm, sm)):
            assert mr["orig_hw"] == ms["orig_hw"] == (480, 640) and mr["scale"] == ms["scale"] == 416 / 640
            assert mr["pad"] == (0.0, float(top)) and ms["pad"] == (0.0, 52.0)
            torch.testing.assert_close(ri[b], si[b, :, 52 - top:52 - top + rows], rtol=0, atol=0)  # the square, cropped
            # the targets on each canvas map back (meta scale / pad) to the record's boxes
            rec = records[mr["image_id"]]
            for targets, meta in ((rt, mr), (st, ms)):
                mine = targets[targets[:, 0] == b]
                back = boxes_from_letterbox(mine[:, 2:].numpy(), meta["scale"], meta["pad"], meta["orig_hw"])
                np.testing.assert_allclose(back, rec.boxes, atol=1e-3, rtol=0)
                assert mine[:, 1].long().tolist() == rec.labels.tolist()
            # a box on the rect canvas and the same content on the square one are the same original box
            box = np.array([[37.5, 10.25, 201.0, 300.0]], np.float32)
            np.testing.assert_allclose(
                boxes_from_letterbox(box, mr["scale"], mr["pad"], mr["orig_hw"]),
                boxes_from_letterbox(box + [0, 52 - top, 0, 52 - top], ms["scale"], ms["pad"], ms["orig_hw"]),
                atol=1e-4, rtol=0)
            seen.append(mr["image_id"])
    assert sorted(seen) == sorted(records)


def test_bccd_rect_with_two_ranks_splits_whole_batches(bccd):
    ranks = [build_eval_loader(bccd, DistInfo(r, r, 2, torch.device("cpu")), "val", rect=True) for r in range(2)]
    ids = [[[m["image_id"] for m in metas] for _, _, metas in loader] for loader in ranks]
    assert ids == [[[1, 2]], [[3]]]


def test_rect_is_for_evaluation_only(bccd):
    train = build_dataset(bccd, "train", train=True, augment=False)
    with pytest.raises(ValueError, match="evaluation only"):
        train.plan_rect(2, 32)
    with pytest.raises(ValueError, match="evaluation loaders only"):
        build_dataloader(train, 2, train=True, num_workers=0, rect_stride=32)
    val = build_dataset(bccd, "val")
    assert val.canvas(0) is None
    batches = val.plan_rect(2, 32)
    assert [b.tolist() for b in batches] == [[0, 1], [2]] and val.canvas(2) == (320, 416)
    image, _, meta = val[2]
    assert tuple(image.shape) == (3, 320, 416) and meta["pad"] == (0.0, 4.0)



def test_rect_batches_reach_loader_workers(bccd):
    loader, sampler = build_dataloader(build_dataset(bccd, "val"), 2, train=False, num_workers=1, rect_stride=32,
                                       persistent_workers=False)
    assert isinstance(sampler, RectBatchSampler) and len(loader) == 2
    got = [(tuple(images.shape), [m["image_id"] for m in metas], metas[0]["pad"]) for images, _, metas in loader]
    assert got == [((2, 3, 320, 416), [1, 2], (0.0, 4.0)), ((1, 3, 320, 416), [3], (0.0, 4.0))]
