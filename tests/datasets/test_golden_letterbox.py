"""Golden letterbox values worked by hand: scale, pads, which rows / columns hold the image and which
the grey pad (114), boxes mapped forward and back, clipping, and the rectangular-canvas variant.

The contract (``datasets.transforms.letterbox``): scale = img_size / long side; resized sides
round(side * scale) (Python's round, half to even); pads floor((canvas - resized) / 2) on the left /
top, the remainder on the right / bottom; ``letterbox_xy = original_xy * scale + pad``.
"""
import numpy as np
import pytest

from datasets.samplers import rect_batches
from datasets.transforms import (
    PAD_VALUE,
    boxes_from_letterbox,
    boxes_to_letterbox,
    letterbox,
    letterbox_params,
    resized_hw,
)

INK = 7  # the value of a constant test image: any resize keeps it exactly


def placed(canvas_hw, top, left, nh, nw):
    """[h, w] bool: True where the image lies (rows top..top + nh - 1, cols left..left + nw - 1)."""
    mask = np.zeros(canvas_hw, bool)
    mask[top:top + nh, left:left + nw] = True
    return mask


# (h, w), img_size -> scale, (resized h, w), (pad_x, pad_y), worked by hand:
#   480 x 640 -> 416: scale 416 / 640 = .65;  h 480 * .65 = 312;  pad_y (416 - 312) // 2 = 52 (52 below too)
#   480 x 640 -> 320: scale .5;                h 240;              pad_y (320 - 240) // 2 = 40
#   500 x 300 -> 416: scale 416 / 500 = .832; w 300 * .832 = 249.6 -> 250; pad_x (416 - 250) // 2 = 83 (83 right)
#    99 x  70 ->  64: scale 64 / 99;          w 4480 / 99 = 45.25 -> 45;  pad_x 19 // 2 = 9 (10 right)
#    45 x 101 ->  64: scale 64 / 101;         h 2880 / 101 = 28.51 -> 29; pad_y 35 // 2 = 17 (18 below)
#     5 x 128 ->  64: scale .5;               h 2.5 -> 2 (half to even); pad_y 62 // 2 = 31
#     7 x 128 ->  64: scale .5;               h 3.5 -> 4 (half to even); pad_y 60 // 2 = 30
CASES = [
    ((480, 640), 416, 0.65, (312, 416), (0, 52)),
    ((480, 640), 320, 0.5, (240, 320), (0, 40)),
    ((500, 300), 416, 0.832, (416, 250), (83, 0)),
    ((99, 70), 64, 64 / 99, (64, 45), (9, 0)),
    ((45, 101), 64, 64 / 101, (29, 64), (0, 17)),
    ((5, 128), 64, 0.5, (2, 64), (0, 31)),
    ((7, 128), 64, 0.5, (4, 64), (0, 30)),
]


@pytest.mark.parametrize("hw, size, scale, new_hw, pad", CASES)
def test_square_letterbox_scale_pad_and_placed_content(hw, size, scale, new_hw, pad):
    out, got_scale, got_pad = letterbox(np.full((*hw, 3), INK, np.uint8), size)
    assert got_scale == pytest.approx(scale, rel=1e-12)
    assert got_pad == (float(pad[0]), float(pad[1]))
    assert resized_hw(hw, size) == new_hw
    assert letterbox_params(hw, size) == (got_scale, got_pad)
    assert out.shape == (size, size, 3)
    mask = placed((size, size), pad[1], pad[0], *new_hw)
    assert (out[mask] == INK).all() and (out[~mask] == PAD_VALUE).all()
    # (the far side's pad, canvas - pad - resized, is pinned by the mask: every pixel outside it is grey)


def test_content_is_placed_unflipped_at_the_pad():
    # 480 x 640 -> 320 halves each side exactly, so a pattern constant on 2 x 2 blocks resizes exactly
    # (area interpolation averages four equal pixels): out[40 + r, c] = pattern(r, c).
    y, x = np.mgrid[0:480, 0:640]
    img = np.repeat((((y // 2) * 3 + (x // 2) * 5) % 200).astype(np.uint8)[..., None], 3, -1)
    out, _, _ = letterbox(img, 320)
    r, c = np.mgrid[0:240, 0:320]
    np.testing.assert_array_equal(out[40:280, :, 0], (r * 3 + c * 5) % 200)
    assert out[39, 0, 0] == PAD_VALUE and out[40, 1, 0] == 5 and out[41, 0, 0] == 3


# Boxes forward by hand (x * scale + pad_x, y * scale + pad_y), and back to within 1e-4 px:
#   480 x 640 -> 416, [100, 50, 300, 250] -> [65, 32.5 + 52, 195, 162.5 + 52] = [65, 84.5, 195, 214.5]
#   500 x 300 -> 416, [30, 100, 150, 400] -> [24.96 + 83, 83.2, 124.8 + 83, 332.8] = [107.96, 83.2, 207.8, 332.8]
#    99 x  70 ->  64, [11, 33, 55, 66]    -> [9 + 704 / 99, 2112 / 99, 9 + 3520 / 99, 4224 / 99]
#                                          = [9 + 64 / 9, 64 / 3, 9 + 320 / 9, 128 / 3]
#    45 x 101 ->  64, [0, 0, 101, 45]     -> [0, 17, 64, 17 + 2880 / 101]: the image bottom maps to 45.51,
#                                             half a pixel above the 29 pasted rows (17 + 29 = 46): boxes
#                                             follow the one scale, not the rounded size
BOXES = [
    ((480, 640), 416, [100, 50, 300, 250], [65, 84.5, 195, 214.5]),
    ((500, 300), 416, [30, 100, 150, 400], [107.96, 83.2, 207.8, 332.8]),
    ((99, 70), 64, [11, 33, 55, 66], [9 + 64 / 9, 64 / 3, 9 + 320 / 9, 128 / 3]),
    ((45, 101), 64, [0, 0, 101, 45], [0, 17, 64, 17 + 2880 / 101]),
]


@pytest.mark.parametrize("hw, size, box, want", BOXES)
def test_boxes_forward_and_back_by_hand(hw, size, box, want):
    scale, pad = letterbox_params(hw, size)
    fwd = boxes_to_letterbox(np.array([box], np.float32), scale, pad)
    np.testing.assert_allclose(fwd, [want], atol=1e-4, rtol=0)
    back = boxes_from_letterbox(np.array([want], np.float64), scale, pad, hw)
    np.testing.assert_allclose(back, [box], atol=1e-4, rtol=0)


def test_inverse_clips_at_the_image_border():
    # 480 x 640 -> 416 (scale .65, pad (0, 52)). A letterboxed box reaching into the pad and past the canvas:
    #   x1 = 13 / .65 = 20; y1 = (45.5 - 52) / .65 = -10 -> 0; x2 = 429 / .65 = 660 -> 640 (w);
    #   y2 = (117 - 52) / .65 = 100
    scale, pad = letterbox_params((480, 640), 416)
    out = boxes_from_letterbox(np.array([[13, 45.5, 429, 117]]), scale, pad, (480, 640))
    np.testing.assert_allclose(out, [[20, 0, 640, 100]], atol=1e-4, rtol=0)
    # wholly inside the bottom pad (rows 364..415): y = (380 - 52) / .65 = 504.6 and (400 - 52) / .65
    # = 535.4, both clipped to h = 480: a zero-height box on the border
    out = boxes_from_letterbox(np.array([[65, 380, 195, 400]]), scale, pad, (480, 640))
    np.testing.assert_allclose(out, [[100, 480, 300, 480]], atol=1e-4, rtol=0)


# Rectangular canvases (``rect_batches``: the largest resized side plus ``pad`` strides, rounded up
# to the stride, never past the square):
#   480 x 640 -> 416, stride 32, pad 0:  h ceil(312 / 32) * 32 = 320;           canvas (320, 416), pad_y 4
#   480 x 640 -> 416, stride 32, pad .5: h ceil(9.75 + .5) * 32 = 352;          canvas (352, 416), pad_y 20
#    45 x 101 ->  64, stride 32, pad 0:  h ceil(29 / 32) * 32 = 32;             canvas (32, 64), pad_y 1 (2 below)
#    45 x 101 ->  64, stride 32, pad .5: h ceil(.906 + .5) * 32 = 64 (= the square)
#    99 x  70 ->  64, stride 8, pad 0:   w ceil(45 / 8) * 8 = 48;               canvas (64, 48), pad_x 1 (2 right)
RECTS = [
    ((480, 640), 416, 32, 0.0, (320, 416), (0, 4)),
    ((480, 640), 416, 32, 0.5, (352, 416), (0, 20)),
    ((45, 101), 64, 32, 0.0, (32, 64), (0, 1)),
    ((45, 101), 64, 32, 0.5, (64, 64), (0, 17)),
    ((99, 70), 64, 8, 0.0, (64, 48), (1, 0)),
]


@pytest.mark.parametrize("hw, size, stride, rect_pad, canvas, pad", RECTS)
def test_rect_canvas_and_its_pads(hw, size, stride, rect_pad, canvas, pad):
    _, canvases = rect_batches(np.array([hw]), 1, size, stride, rect_pad)
    assert tuple(canvases[0].tolist()) == canvas
    out, scale, got_pad = letterbox(np.full((*hw, 3), INK, np.uint8), size, canvas)
    assert out.shape == (*canvas, 3) and got_pad == (float(pad[0]), float(pad[1]))
    assert scale == letterbox_params(hw, size)[0]  # the canvas never changes the scale
    mask = placed(canvas, pad[1], pad[0], *resized_hw(hw, size))
    assert (out[mask] == INK).all() and (out[~mask] == PAD_VALUE).all()


def test_box_on_a_rect_canvas_by_hand():
    # 480 x 640 -> 416 on the (320, 416) canvas: pad (0, 4). [100, 50, 300, 250] -> [65, 32.5 + 4, 195,
    # 162.5 + 4] = [65, 36.5, 195, 166.5]: the square's box moved up by the pad difference 52 - 4 = 48.
    scale, pad = letterbox_params((480, 640), 416, (320, 416))
    assert pad == (0.0, 4.0)
    fwd = boxes_to_letterbox(np.array([[100, 50, 300, 250]]), scale, pad)
    np.testing.assert_allclose(fwd, [[65, 36.5, 195, 166.5]], atol=1e-4, rtol=0)
    back = boxes_from_letterbox(fwd, scale, pad, (480, 640))
    np.testing.assert_allclose(back, [[100, 50, 300, 250]], atol=1e-4, rtol=0)
