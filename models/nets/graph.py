"""Graph networks: a YOLOv9-family model written as an indexed table of layers (spec section 4).

Each table row is a ``Layer``: a block name, its arguments (output channels first, input channels
are inferred), where its input comes from, and whether it belongs to the PGI auxiliary branch.
Row i (counted from ``FIRST_INDEX``) is built as ``model.{i}``, so state-dict keys are
``model.{i}.{MIT attribute path}`` and a MIT release file loads after prefixing "model.".

Sources: -1 is the previous row, other negative numbers count back from the row (as in the
YOLO yaml files), non-negative numbers are absolute row indices and ``IMG`` is the input image.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from models.blocks import (
    ELAN,
    SPPCSPC,
    SPPELAN,
    AConv,
    ADown,
    CBFuse,
    CBLinear,
    Concat,
    Conv,
    Pool,
    RepConv,
    RepNCSPELAN,
    RepNCSPELAND,
    UpSample,
)
from models.detector import DetectorBase
from models.heads.dfl_head import DFLHead
from models.heads.v7_head import IDetectHead

IMG = "img"
HEAD_BLOCKS = ("DFLHead", "IDetect")
NECK_START_BLOCKS = ("SPPELAN", "SPPCSPC")  # the first row of the neck ("head" section of the YOLO yamls)

Source = int | str


@dataclass(frozen=True)
class Layer:
    block: str
    args: tuple = ()
    src: Source | tuple[Source, ...] = -1  # a tuple means the block takes a list of inputs
    aux: bool = False


# -- table helpers: one per block, arguments as in the spec tables -----------------------------
def conv(co: int, k: int = 3, s: int = 1, src: Source = -1) -> Layer:
    return Layer("Conv", (co, k, s), src)


def elan(co: int, part: int, proc: int, src: Source = -1) -> Layer:
    return Layer("ELAN", (co, part, proc), src)


def rep(co: int, part: int, proc: int, n: int = 1, src: Source = -1) -> Layer:
    return Layer("RepNCSPELAN", (co, part, proc, n), src)


def rep_d(co: int, part: int, proc: int, n: int = 1, atoms: int = 512, src: Source = -1) -> Layer:
    return Layer("RepNCSPELAND", (co, part, proc, n, atoms), src)


def aconv(co: int, src: Source = -1) -> Layer:
    return Layer("AConv", (co,), src)


def adown(co: int, src: Source = -1) -> Layer:
    return Layer("ADown", (co,), src)


def sppelan(co: int, neck: int, src: Source = -1) -> Layer:
    return Layer("SPPELAN", (co, neck), src)


def sppcspc(co: int, src: Source = -1) -> Layer:
    return Layer("SPPCSPC", (co,), src)


def repconv(co: int, src: Source = -1) -> Layer:
    return Layer("RepConv", (co,), src)


def cblinear(cos: list[int], src: Source = -1) -> Layer:
    return Layer("CBLinear", (tuple(cos),), src)


def cbfuse(idx: list[int], *src: Source) -> Layer:
    return Layer("CBFuse", (tuple(idx),), tuple(src))


def concat(*src: Source) -> Layer:
    return Layer("Concat", (), tuple(src))


def up() -> Layer:
    return Layer("UpSample")


def pool(src: Source = -1) -> Layer:
    return Layer("Pool", (), src)


def dfl_head(*src: Source) -> Layer:
    return Layer("DFLHead", (), tuple(src))


def idetect(*src: Source) -> Layer:
    return Layer("IDetect", (), tuple(src))


def aux(*layers: Layer) -> tuple[Layer, ...]:
    """Mark rows as part of the auxiliary (training-only) branch."""
    return tuple(replace(layer, aux=True) for layer in layers)


def make_block(layer: Layer, ch: list, num_classes: int, strides: list[int],
               anchors: list | None) -> tuple[nn.Module, Any]:
    """Build the block of a row from its input channels ``ch``; returns (module, output channels).

    CBLinear outputs are lists of channel counts (one per chunk); heads output None.
    """
    c, a = ch[0], layer.args
    simple = {"Conv": Conv, "ELAN": ELAN, "RepNCSPELAN": RepNCSPELAN, "AConv": AConv, "ADown": ADown,
              "SPPELAN": SPPELAN, "SPPCSPC": SPPCSPC, "RepConv": RepConv}
    if layer.block in simple:
        return simple[layer.block](c, *a), a[0]
    if layer.block == "RepNCSPELAND":
        co, part, proc, n, atoms = a
        return RepNCSPELAND(c, co, part, proc, n, atoms), co
    if layer.block == "CBLinear":
        return CBLinear(c, list(a[0])), list(a[0])
    if layer.block == "CBFuse":
        return CBFuse(list(a[0])), ch[-1]
    if layer.block == "Concat":
        return Concat(), sum(ch)
    if layer.block == "UpSample":
        return UpSample(), c
    if layer.block == "Pool":
        return Pool(), c
    if layer.block == "DFLHead":
        return DFLHead(ch, num_classes, strides), None
    if layer.block == "IDetect":
        return IDetectHead(ch, num_classes, len(anchors[0]), strides), None
    raise ValueError(f"unknown block {layer.block!r} in a network table")


class _Step(NamedTuple):
    key: str  # row index as a string (ModuleDict key)
    srcs: tuple  # resolved sources (row indices or IMG)
    multi: bool  # the block takes a list of inputs
    free: tuple  # cached outputs no later step of this plan reads


class GraphNet(DetectorBase):
    """A YOLOv9-family network built from the row table ``LAYERS`` of a subclass.

    Constructor: (num_classes, coder=None, aux=True, anchors=None). ``anchors`` (per level [[w, h], ...]
    in input pixels) replace the class's own ``ANCHORS`` of an anchor-based net. With ``aux=False`` (or for a class without an
    auxiliary branch) the auxiliary rows are not built at all; row indices never change, so the
    weights of a model with the branch load into one without it by key.

    forward(images [B, 3, H, W] in [0, 1], no normalisation) returns raw [B, P, D] of the main
    head; while training with the auxiliary branch built it returns (main_raw, aux_raw).
    Auxiliary rows are not run in eval mode.

    Attributes: ``model`` (ModuleDict of the rows), ``num_classes``, ``has_aux``,
    ``main_head_index`` / ``aux_head_index`` (row indices; the latter None without the branch),
    ``aux_indices`` (rows of the auxiliary branch that were built), ``sources`` (row -> tuple of
    the rows, or ``IMG``, it reads; relative sources resolved).
    """

    name: ClassVar[str]
    LAYERS: ClassVar[tuple[Layer, ...]]
    FIRST_INDEX: ClassVar[int] = 0
    HAS_AUX_BRANCH: ClassVar[bool] = True
    STRIDES: ClassVar[tuple[int, ...]] = (8, 16, 32)
    ANCHORS: ClassVar[list | None] = None
    family = "dfl"

    def __init__(self, num_classes: int, coder=None, aux: bool = True, anchors: list | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {num_classes}")
        super().__init__(list(self.STRIDES), anchors or self.ANCHORS, coder)
        self.num_classes = num_classes
        self.has_aux = bool(aux) and self.HAS_AUX_BRANCH and any(layer.aux for layer in self.LAYERS)
        self.model = nn.ModuleDict()
        self.main_head_index: int | None = None
        self.aux_head_index: int | None = None
        self.sources: dict[int, tuple[Source, ...]] = {}
        self._multi: dict[int, bool] = {}
        channels: dict[Source, Any] = {IMG: 3}
        aux_rows = set()
        for i, layer in enumerate(self.LAYERS, self.FIRST_INDEX):
            if layer.aux and not self.has_aux:
                continue
            multi = isinstance(layer.src, tuple)
            srcs = tuple(i + s if isinstance(s, int) and s < 0 else s for s in (layer.src if multi else (layer.src,)))
            missing = [s for s in srcs if s not in channels]
            if missing:
                raise ValueError(f"{self.name}: row {i} reads rows {missing}, which produce no feature map here")
            module, out = make_block(layer, [channels[s] for s in srcs], num_classes, self.strides, self.anchors)
            self.model[str(i)] = module
            self.sources[i], self._multi[i] = srcs, multi
            if layer.aux:
                aux_rows.add(i)
            if layer.block in HEAD_BLOCKS:
                if layer.aux:
                    self.aux_head_index = i
                else:
                    self.main_head_index = i
            else:
                channels[i] = out
        self.aux_indices: frozenset[int] = frozenset(aux_rows)
        self._plans = {run_aux: self._plan(run_aux) for run_aux in {False, self.has_aux}}

    def _plan(self, run_aux: bool) -> list[_Step]:
        """The rows to run, in order, each with the cached outputs that can be dropped after it."""
        rows = [i for i in self.sources if run_aux or i not in self.aux_indices]
        last_use = {s: i for i in rows for s in self.sources[i]}
        return [_Step(str(i), self.sources[i], self._multi[i],
                      tuple(s for s, j in last_use.items() if j == i)) for i in rows]

    def backbone_prefixes(self) -> list[str]:
        """Module names of the backbone: the main-branch rows before the first neck row (the SPP block
        that opens the neck), e.g. rows 0-8 of v9-t/s/m/c and rows 1-28 (both backbones) of v9-e."""
        main = [(i, layer) for i, layer in enumerate(self.LAYERS, self.FIRST_INDEX) if not layer.aux]
        neck = next(i for i, layer in main if layer.block in NECK_START_BLOCKS)
        return [f"model.{i}" for i, _ in main if i < neck and str(i) in self.model]

    @property
    def main_head(self) -> nn.Module:
        return self.model[str(self.main_head_index)]

    @property
    def aux_head(self) -> nn.Module | None:
        return None if self.aux_head_index is None else self.model[str(self.aux_head_index)]

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        run_aux = self.training and self.has_aux
        cache: dict[Source, Any] = {IMG: images}
        for step in self._plans[run_aux]:
            x = [cache[s] for s in step.srcs] if step.multi else cache[step.srcs[0]]
            y = self.model[step.key](x)
            for s in step.free:
                del cache[s]
            cache[int(step.key)] = y
        main = cache[self.main_head_index]
        return (main, cache[self.aux_head_index]) if run_aux else main
