"""YOLOv7 (ORIG cfg/training/yolov7.yaml; MIT v7.yaml has the same 106 rows; spec section 4.6).

Follows ORIG where MIT differs: the P3 route reads conv row 24 (MIT reads the concat at 23) and
the SPPCSPC pools run in parallel.
"""
from __future__ import annotations

from models.nets.graph import (
    IMG,
    GraphNet,
    concat,
    conv,
    idetect,
    pool,
    repconv,
    sppcspc,
    up,
)

# Anchors of the P3 / P4 / P5 levels, [w, h] in input pixels (for 640 training).
V7_ANCHORS = [[[12, 16], [19, 36], [40, 28]],
              [[36, 75], [76, 55], [72, 146]],
              [[142, 110], [192, 243], [459, 401]]]


def _elan_backbone(c: int, co: int) -> tuple:
    """Two 1x1 from the same input, four chained 3x3, concat [last, 2nd, 1x1-b, 1x1-a], 1x1 to co."""
    return (conv(c, 1, 1), conv(c, 1, 1, -2), conv(c, 3, 1), conv(c, 3, 1), conv(c, 3, 1), conv(c, 3, 1),
            concat(-1, -3, -5, -6), conv(co, 1, 1))


def _elan_head(c1: int, c2: int, co: int) -> tuple:
    """Two 1x1 (c1) from the same input, four chained 3x3 (c2), concat of all six, 1x1 to co."""
    return (conv(c1, 1, 1), conv(c1, 1, 1, -2), conv(c2, 3, 1), conv(c2, 3, 1), conv(c2, 3, 1),
            conv(c2, 3, 1), concat(-1, -2, -3, -4, -5, -6), conv(co, 1, 1))


def _mp_down(c: int, *extra: int) -> tuple:
    """MaxPool -> 1x1 in parallel with 1x1 -> 3x3 stride 2; concat (plus ``extra`` rows)."""
    return (pool(), conv(c, 1, 1), conv(c, 1, 1, -3), conv(c, 3, 2), concat(-1, -3, *extra))


_V7 = (
    conv(32, 3, 1, IMG), conv(64, 3, 2), conv(64, 3, 1), conv(128, 3, 2),  # 0-3
    *_elan_backbone(64, 256),  # 4-11
    *_mp_down(128), *_elan_backbone(128, 512),  # 12-16, 17-24 (24 = backbone P3)
    *_mp_down(256), *_elan_backbone(256, 1024),  # 25-29, 30-37 (37 = B4)
    *_mp_down(512), *_elan_backbone(256, 1024),  # 38-42, 43-50 (50 = B5)
    sppcspc(512),  # 51
    conv(256, 1, 1), up(), conv(256, 1, 1, 37), concat(-1, -2), *_elan_head(256, 128, 256),  # 52-63
    conv(128, 1, 1), up(), conv(128, 1, 1, 24), concat(-1, -2), *_elan_head(128, 64, 128),  # 64-75 = P3
    *_mp_down(128, 63), *_elan_head(256, 128, 256),  # 76-88 = P4
    *_mp_down(256, 51), *_elan_head(512, 256, 512),  # 89-101 = P5
    repconv(256, 75), repconv(512, 88), repconv(1024, 101),  # 102-104
    idetect(102, 103, 104),  # 105
)


class V7(GraphNet):
    name = "v7"
    family = "anchor"
    LAYERS = _V7
    ANCHORS = V7_ANCHORS
