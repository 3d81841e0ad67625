"""YOLOv9, GELAN and YOLO-RD network tables (spec sections 4.1-4.5).

t, s, m, c and rd-9c use the MIT row indices (Main head 22; AUX head 30 for t/s, 38 for m/c/rd).
E has no MIT layout: it uses the ORIG yolov9-e indices (row 0 is ORIG's ``Silence``, i.e. the
image, so the table starts at row 1), with ORIG's DualDDetect split into the Main head (row 49)
and the AUX head (row 50). gelan-X is v9-X without the auxiliary branch (same row indices).
"""
from __future__ import annotations

from models.nets.graph import (
    IMG,
    GraphNet,
    aconv,
    adown,
    aux,
    cbfuse,
    cblinear,
    concat,
    conv,
    dfl_head,
    elan,
    rep,
    rep_d,
    sppelan,
    up,
)


def _small(k: int) -> tuple:
    """v9-t (k = 1) and v9-s (k = 2): same rows, v9-s has twice the channels. PGI here is a second
    FPN over the shared backbone (rows 23-30)."""
    return (
        conv(16 * k, 3, 2, IMG), conv(32 * k, 3, 2), elan(32 * k, 32 * k, 16 * k),  # 0-2
        aconv(64 * k), rep(64 * k, 64 * k, 32 * k, 3),  # 3, 4 = B3
        aconv(96 * k), rep(96 * k, 96 * k, 48 * k, 3),  # 5, 6 = B4
        aconv(128 * k), rep(128 * k, 128 * k, 64 * k, 3),  # 7, 8 = B5
        sppelan(128 * k, 64 * k),  # 9 = N3
        up(), concat(-1, 6), rep(96 * k, 96 * k, 48 * k, 3),  # 10-12 = N4
        up(), concat(-1, 4), rep(64 * k, 64 * k, 32 * k, 3),  # 13-15 = P3
        aconv(48 * k), concat(-1, 12), rep(96 * k, 96 * k, 48 * k, 3),  # 16-18 = P4
        aconv(64 * k), concat(-1, 9), rep(128 * k, 128 * k, 64 * k, 3),  # 19-21 = P5
        dfl_head(15, 18, 21),  # 22 = Main
        *aux(
            sppelan(128 * k, 64 * k, src=8),  # 23 = A5
            up(), concat(-1, 6), rep(96 * k, 96 * k, 48 * k, 3),  # 24-26 = A4
            up(), concat(-1, 4), rep(64 * k, 64 * k, 32 * k, 3),  # 27-29 = A3
            dfl_head(29, 26, 23),  # 30 = AUX
        ),
    )


_V9M = (
    conv(32, 3, 2, IMG), conv(64, 3, 2), rep(128, 128, 64),  # 0-2
    aconv(240), rep(240, 240, 120),  # 3, 4 = B3
    aconv(360), rep(360, 360, 180),  # 5, 6 = B4
    aconv(480), rep(480, 480, 240),  # 7, 8 = B5
    sppelan(480, 240),  # 9 = N3
    up(), concat(-1, 6), rep(360, 360, 180),  # 10-12 = N4
    up(), concat(-1, 4), rep(240, 240, 120),  # 13-15 = P3
    aconv(184), concat(-1, 12), rep(360, 360, 180),  # 16-18 = P4 (184 as in the released weights)
    aconv(240), concat(-1, 9), rep(480, 480, 240),  # 19-21 = P5
    dfl_head(15, 18, 21),  # 22 = Main
    *aux(
        cblinear([240], src=4), cblinear([240, 360], src=6), cblinear([240, 360, 480], src=8),  # 23-25
        conv(32, 3, 2, IMG), conv(64, 3, 2), rep(128, 128, 64),  # 26-28
        aconv(240), cbfuse([0, 0, 0], 23, 24, 25, -1), rep(240, 240, 120),  # 29-31 = A3
        aconv(360), cbfuse([1, 1], 24, 25, -1), rep(360, 360, 180),  # 32-34 = A4
        aconv(480), cbfuse([2], 25, -1), rep(480, 480, 240),  # 35-37 = A5
        dfl_head(31, 34, 37),  # 38 = AUX
    ),
)


def _large(b3) -> tuple:
    """v9-c, with ``b3`` as row 4 (RepNCSPELAN for v9-c, RepNCSPELAND for rd-9c). PGI here is a
    second backbone fed by CBLinear/CBFuse projections of the first (rows 23-38)."""
    return (
        conv(64, 3, 2, IMG), conv(128, 3, 2), rep(256, 128, 64),  # 0-2
        adown(256), b3,  # 3, 4 = B3
        adown(512), rep(512, 512, 256),  # 5, 6 = B4
        adown(512), rep(512, 512, 256),  # 7, 8 = B5
        sppelan(512, 256),  # 9 = N3
        up(), concat(-1, 6), rep(512, 512, 256),  # 10-12 = N4
        up(), concat(-1, 4), rep(256, 256, 128),  # 13-15 = P3
        adown(256), concat(-1, 12), rep(512, 512, 256),  # 16-18 = P4
        adown(512), concat(-1, 9), rep(512, 512, 256),  # 19-21 = P5
        dfl_head(15, 18, 21),  # 22 = Main
        *aux(
            cblinear([256], src=4), cblinear([256, 512], src=6), cblinear([256, 512, 512], src=8),  # 23-25
            conv(64, 3, 2, IMG), conv(128, 3, 2), rep(256, 128, 64),  # 26-28
            adown(256), cbfuse([0, 0, 0], 23, 24, 25, -1), rep(512, 256, 128),  # 29-31 = A3
            adown(512), cbfuse([1, 1], 24, 25, -1), rep(512, 512, 256),  # 32-34 = A4
            adown(512), cbfuse([2], 25, -1), rep(512, 512, 256),  # 35-37 = A5
            dfl_head(31, 34, 37),  # 38 = AUX
        ),
    )


# ORIG yolov9-e, rows 1-50. Every RepNCSPELAN has n = 2. The dual (CBNet) backbone stays in the
# inference model; the auxiliary part is the FPN over backbone 1 (rows 29-35) and its head (50).
_V9E = (
    conv(64, 3, 2, IMG), conv(128, 3, 2), rep(256, 128, 64, 2),  # 1-3
    adown(256), rep(512, 256, 128, 2),  # 4, 5
    adown(512), rep(1024, 512, 256, 2),  # 6, 7
    adown(1024), rep(1024, 512, 256, 2),  # 8, 9
    cblinear([64], src=1), cblinear([64, 128], src=3), cblinear([64, 128, 256], src=5),  # 10-12
    cblinear([64, 128, 256, 512], src=7), cblinear([64, 128, 256, 512, 1024], src=9),  # 13, 14
    conv(64, 3, 2, IMG), cbfuse([0, 0, 0, 0, 0], 10, 11, 12, 13, 14, -1),  # 15, 16
    conv(128, 3, 2), cbfuse([1, 1, 1, 1], 11, 12, 13, 14, -1),  # 17, 18
    rep(256, 128, 64, 2),  # 19
    adown(256), cbfuse([2, 2, 2], 12, 13, 14, -1), rep(512, 256, 128, 2),  # 20-22
    adown(512), cbfuse([3, 3], 13, 14, -1), rep(1024, 512, 256, 2),  # 23-25
    adown(1024), cbfuse([4], 14, -1), rep(1024, 512, 256, 2),  # 26-28
    *aux(
        sppelan(512, 256, src=9),  # 29
        up(), concat(-1, 7), rep(512, 512, 256, 2),  # 30-32
        up(), concat(-1, 5), rep(256, 256, 128, 2),  # 33-35
    ),
    sppelan(512, 256, src=28),  # 36
    up(), concat(-1, 25), rep(512, 512, 256, 2),  # 37-39
    up(), concat(-1, 22), rep(256, 256, 128, 2),  # 40-42 = P3
    adown(256), concat(-1, 39), rep(512, 512, 256, 2),  # 43-45 = P4
    adown(512), concat(-1, 36), rep(512, 1024, 512, 2),  # 46-48 = P5
    dfl_head(42, 45, 48),  # 49 = Main
    *aux(dfl_head(35, 32, 29)),  # 50 = AUX
)


class V9T(GraphNet):
    name = "v9-t"
    LAYERS = _small(1)


class V9S(GraphNet):
    name = "v9-s"
    LAYERS = _small(2)


class V9M(GraphNet):
    name = "v9-m"
    LAYERS = _V9M


class V9C(GraphNet):
    name = "v9-c"
    LAYERS = _large(rep(512, 256, 128))


class V9E(GraphNet):
    name = "v9-e"
    LAYERS = _V9E
    FIRST_INDEX = 1


class RD9C(GraphNet):
    """YOLO-RD on v9-c: row 4 (B3) gains a DConv (alpha 0.8, 512 atoms); the aux branch is unchanged."""

    name = "rd-9c"
    LAYERS = _large(rep_d(512, 256, 128, atoms=512))


class GelanT(V9T):
    name = "gelan-t"
    HAS_AUX_BRANCH = False


class GelanS(V9S):
    name = "gelan-s"
    HAS_AUX_BRANCH = False


class GelanM(V9M):
    name = "gelan-m"
    HAS_AUX_BRANCH = False


class GelanC(V9C):
    name = "gelan-c"
    HAS_AUX_BRANCH = False


class GelanE(V9E):
    name = "gelan-e"
    HAS_AUX_BRANCH = False
