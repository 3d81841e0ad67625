"""Anchor fitting: planted anchors are recovered from boxes drawn around them, the same seed gives the
same anchors, and the fit measures mean what they say on hand-made cases."""
import numpy as np
import pytest

from models.anchor_fit import evaluate, fit_anchors, ratio_measure, shape_iou

PLANTED = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
                    [373, 326]], dtype=float)


def boxes_around(anchors: np.ndarray, n: int, seed: int, spread: float = 0.08) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return anchors[rng.integers(0, len(anchors), n)] * np.exp(rng.normal(0, spread, (n, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_anchors_are_recovered(seed):
    wh = boxes_around(PLANTED, 4000, seed + 10)
    fitted = fit_anchors(wh, 3, 3, "iou", 0.25, seed=seed, generations=200)
    assert fitted.shape == (3, 3, 2)
    flat = fitted.reshape(-1, 2)
    assert np.all(np.diff(flat.prod(1)) >= 0)  # smallest first: the finest level gets the small ones
    assert np.abs(np.log(flat / PLANTED)).max() < 0.05  # every planted anchor within 5%


def test_the_same_seed_gives_the_same_anchors_and_ratio_fits_work():
    wh = boxes_around(PLANTED[:6], 1500, 3)
    a = fit_anchors(wh, 2, 3, "ratio", 1 / 4.0, seed=7, generations=100)
    b = fit_anchors(wh, 2, 3, "ratio", 1 / 4.0, seed=7, generations=100)
    assert np.array_equal(a, b)
    assert evaluate(wh, a.reshape(-1, 2), "ratio", 0.25).bpr == 1.0


def test_fit_measures_on_hand_made_boxes():
    anchors = np.array([[10.0, 10.0], [40.0, 20.0]])
    wh = np.array([[10.0, 10.0], [20.0, 20.0], [100.0, 5.0]])
    iou = shape_iou(wh, anchors)
    assert iou[0].tolist() == pytest.approx([1.0, 100 / 800])
    assert iou[1].tolist() == pytest.approx([100 / 400, 400 / 800])
    assert ratio_measure(wh, anchors)[2].tolist() == pytest.approx([0.1, 0.25])
    fit = evaluate(wh, anchors, "iou", 0.5)
    assert fit.bpr == pytest.approx(2 / 3) and fit.per_gt == pytest.approx(2 / 3)  # the 100x5 box matches none
    assert fit.mean_best == pytest.approx((1.0 + 0.5 + iou[2].max()) / 3)


def test_too_few_boxes_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 9 boxes of 2 px or more, got 3"):
        fit_anchors(np.full((3, 2), 10.0), 3, 3, "iou", 0.25)
