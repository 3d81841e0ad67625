"""Fake quantisation for quantisation-aware training towards TFLite INT8 (``--task qat``: core/deploy/qat.py).

The simulated scheme is the one onnx2tf and the TFLite converter produce:

- weights: int8 per output channel, symmetric (zero point 0, integers in [-127, 127]), of the
  deployed convolution, i.e. with its BatchNorm folded in (and both RepConv branches merged);
- activations: int8 per tensor, affine (integers in [-128, 127] and a zero point), ranges from
  min/max observers (moving average while training, running min/max while calibrating);
- float model input and output (the converter quantises the input and dequantises the output).

:func:`prepare_qat` rewrites a model in place. One probe forward (hooks on the leaf modules,
tensors matched by storage, so views such as ``chunk`` and in-place activations keep their
producer) finds which BatchNorm directly follows which Conv2d and where TFLite has int8 tensors:

- ``QatConv`` replaces a Conv2d (its following BatchNorm2d moves inside it, an Identity takes its
  place): weight fake quantisation of the folded weight ``W * gamma / sigma`` (running sigma, as
  torch.ao's ConvBn modules; BN keeps normalising with batch statistics and updating its running
  ones until :func:`freeze_bn`), output fake quantisation unless a ReLU follows (TFLite fuses it),
  input fake quantisation when the input is a new tensor of an op the probe cannot see as a module
  (an add, a concat, an interpolation, the input normalisation of the simple YOLO; max pooling,
  upsampling modules and views keep their input's int8 scale, as in TFLite);
- ``QatRepConv`` replaces an unfused RepConv: with running BN statistics (eval, or BN frozen) its
  weight is the merged 3x3 one the export uses; with batch statistics each branch is simulated;
- ``QatAct`` wraps ReLU / ReLU6 / LeakyReLU / SiLU / Hardswish / Mish: output fake quantisation
  (one quantiser per call: ResNet blocks call one activation module twice) and, for SiLU, the
  fixed 1/256 int8 sigmoid of TFLite's LOGISTIC;
- ``model.qat`` (``QatState``) fake-quantises the network input in a forward pre-hook.

Modules the probe does not reach (the PGI auxiliary branch of the YOLOv9 family, dropped at
export) stay float. :func:`strip_qat` gives back the ordinary float model (same state-dict keys
as before ``prepare_qat``) with the fine-tuned weights, so ``qat.pth`` is a normal checkpoint.
The box decode after the head convolutions stays float, as in the exported INT8 file. The
activation ranges are not exported: the INT8 converter calibrates its own (export.calib_*).
"""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from core.deploy.fake_quant import (
    ACTS,
    FUSED_ACTS,
    PASS_THROUGH,
    ActFakeQuant,
    QatAct,
    QatConv,
    QatRepConv,
    QatState,
    SigmoidFakeQuant,
    _CallCounted,
)
from models.blocks import RepConv


def _qat_pre_forward(model: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a prepared model: reset the per-call counters, keep frozen BN in eval
    mode, fake-quantise the input images. Uses only ``model``, so deep copies (EMA) stay right."""
    frozen = bool(model.qat.bn_frozen)
    for m in model.modules():
        if isinstance(m, _CallCounted):
            m.call = 0
        elif frozen and isinstance(m, _BatchNorm):
            m.train(False)
    return (model.qat.input_fq(args[0]), *args[1:])


# -- the probe: what follows what -----------------------------------------------------------
class _Src(NamedTuple):
    name: str  # producing leaf module ("" = the model input)
    call: int


def _key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _is_leaf(m: nn.Module) -> bool:
    return (isinstance(m, RepConv) and m.fused is None) or next(m.children(), None) is None


@torch.no_grad()
def _probe(model: nn.Module, img_hw: tuple[int, int]) -> dict[str, list[_Src | None]]:
    """Run one eval forward; for each leaf module called, the producer of its input, per call."""
    names: dict[int, str] = {}
    reps: list[str] = []  # RepConv blocks are probed whole: their inside becomes one merged conv
    for name, m in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in reps) or not _is_leaf(m):
            continue
        names[id(m)] = name
        if isinstance(m, RepConv):
            reps.append(name)
    producer: dict[int, _Src] = {}
    calls: dict[str, list[_Src | None]] = defaultdict(list)
    keep: list[Tensor] = []  # alive until the end, so no storage address is reused

    def hook(m: nn.Module, args: tuple, out) -> None:
        name = names[id(m)]
        x = args[0] if args and isinstance(args[0], Tensor) else None
        calls[name].append(producer.get(_key(x)) if x is not None else None)
        if isinstance(out, Tensor):
            producer[_key(out)] = _Src(name, len(calls[name]) - 1)
            keep.append(out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in names]
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    images = torch.rand(1, 3, *img_hw, device=param.device, dtype=param.dtype)
    producer[_key(images)] = _Src("", 0)
    try:
        model.eval()(images)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return dict(calls)


# -- prepare / strip ------------------------------------------------------------------------
def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _paths(model: nn.Module) -> dict[int, list[str]]:
    """Every path under which each module is registered (a module may sit in several places)."""
    out: dict[int, list[str]] = defaultdict(list)
    for name, m in model.named_modules(remove_duplicate=False):
        out[id(m)].append(name)
    return out


class _Plan:
    """Decisions from a probe: BN folds and the quantisation points of every module."""

    def __init__(self, model: nn.Module, calls: dict[str, list[_Src | None]]) -> None:
        self.mods = dict(model.named_modules())
        self.calls = calls
        self.folds: dict[str, str] = {}  # conv name -> bn name
        consumers: dict[_Src, list[str]] = defaultdict(list)
        for name, srcs in calls.items():
            for s in srcs:
                if s is not None:
                    consumers[s].append(name)
        for name, srcs in calls.items():
            bn = self.mods[name]
            if type(bn) is not nn.BatchNorm2d or len(srcs) != 1 or srcs[0] is None:
                continue
            conv = self.mods.get(srcs[0].name)
            if (isinstance(conv, nn.Conv2d) and len(calls[srcs[0].name]) == 1 and bn.affine
                    and bn.track_running_stats and bn.num_features == conv.out_channels
                    and consumers[srcs[0]] == [name]):
                self.folds[srcs[0].name] = name
        self.folded_bns = set(self.folds.values())
        self.consumers = consumers

    def quantised(self, src: _Src | None) -> bool:
        """Whether the tensor ``src`` produced is already an int8 tensor of the simulation."""
        if src is None:
            return False
        if src.name == "":
            return True
        m = self.mods[src.name]
        if isinstance(m, (nn.Conv2d, RepConv) + ACTS) or src.name in self.folded_bns:
            return True
        if isinstance(m, PASS_THROUGH):
            return self.quantised(self.calls[src.name][src.call])
        return False

    def output_flags(self, name: str) -> list[bool]:
        """Per call of a conv: an output quantiser unless a fused ReLU consumes the (BN) output."""
        out = []
        for k in range(len(self.calls[name])):
            src = _Src(self.folds[name], 0) if name in self.folds else _Src(name, k)
            out.append(not any(isinstance(self.mods[c], FUSED_ACTS) for c in self.consumers[src]))
        return out

    def input_flags(self, name: str) -> list[bool]:
        return [not self.quantised(s) for s in self.calls[name]]


def is_prepared(model: nn.Module) -> bool:
    """True when ``model`` went through :func:`prepare_qat` (and was not stripped)."""
    return isinstance(getattr(model, "qat", None), QatState)


def prepare_qat(model: nn.Module, img_hw: tuple[int, int] = (64, 64)) -> nn.Module:
    """Rewrite ``model`` in place for quantisation-aware training (see the module docstring) and
    return it. ``img_hw``: input size of the probe forward (any size the network accepts).

    Raises:
        ValueError: the model is already prepared, or the probe reached no Conv2d.
        TypeError: the model is a container (Sequential, ModuleList, ModuleDict).
    """
    if is_prepared(model):
        raise ValueError("prepare_qat: the model is already prepared for QAT")
    if isinstance(model, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        raise TypeError(f"prepare_qat: the model gains a child 'qat', which a {type(model).__name__} would "
                        "run or list as a layer; wrap it in a module with its own forward")
    plan = _Plan(model, _probe(model, img_hw))
    paths = _paths(model)
    convs = [n for n in plan.calls if isinstance(plan.mods[n], nn.Conv2d)]
    if not convs:
        raise ValueError(f"prepare_qat: no Conv2d of {type(model).__name__} ran in the probe forward")
    for name in convs:
        conv = plan.mods[name]
        bn = plan.mods[plan.folds[name]] if name in plan.folds else None
        bn_paths = paths[id(bn)] if bn is not None else []
        unit = QatConv(conv, bn, bn_paths, plan.input_flags(name), plan.output_flags(name))
        for p in paths[id(conv)]:
            _set_module(model, p, unit)
        for p in bn_paths:
            _set_module(model, p, nn.Identity())
    for name, srcs in plan.calls.items():
        m = plan.mods[name]
        if isinstance(m, RepConv):
            fused = isinstance(m.act, FUSED_ACTS)
            unit = QatRepConv(m, plan.input_flags(name), [not fused] * len(srcs),
                              [isinstance(m.act, ACTS)] * len(srcs))
        elif isinstance(m, ACTS):
            ins = [f and not isinstance(m, FUSED_ACTS) for f in plan.input_flags(name)]
            unit = QatAct(m, ins, [True] * len(srcs))
        else:
            continue
        for p in paths[id(m)]:
            _set_module(model, p, unit)
    model.qat = QatState().to(next(model.parameters()).device)
    model.register_forward_pre_hook(_qat_pre_forward)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """A float copy of a prepared ``model``: the original modules back in their places with the
    QAT-trained weights and BN statistics, no quantiser, no hook. Its state-dict keys are those of
    the model before :func:`prepare_qat`. ``model`` itself is left as it is."""
    if not is_prepared(model):
        raise ValueError("strip_qat: the model was not prepared with prepare_qat")
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, QatConv):
            _set_module(model, name, m.conv)
            for p in m.bn_paths:
                _set_module(model, p, m.bn)
        elif isinstance(m, QatAct):
            _set_module(model, name, m.act)
        elif isinstance(m, QatRepConv):
            _set_module(model, name, m.rep)
    del model.qat
    hooks = model._forward_pre_hooks
    for k in [k for k, fn in hooks.items() if fn is _qat_pre_forward]:
        del hooks[k]
    return model


def freeze_bn(model: nn.Module) -> None:
    """Stop the BatchNorm statistic updates of a prepared model for good: every BN stays in eval
    mode (running statistics) from now on, also after ``model.train()``."""
    model.qat.bn_frozen.fill_(True)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.train(False)


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn every weight and activation quantiser of a prepared model on (fake-quant) or off (float)."""
    for m in model.modules():
        if isinstance(m, ActFakeQuant | SigmoidFakeQuant):
            m.enabled = enabled
        elif isinstance(m, _CallCounted):
            m.quantise_weights = enabled


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Set the activation ranges of a prepared model to the min and max seen over ``batches`` of
    images [B, 3, H, W] (eval mode: BN statistics and weights untouched); returns images seen."""
    fqs = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    was_training = model.training
    model.eval()
    seen = 0
    for m in fqs:
        m.calibrating = True
    try:
        for images in batches:
            model(images)
            seen += images.shape[0]
    finally:
        for m in fqs:
            m.calibrating = False
        model.train(was_training)
    return seen


def qat_summary(model: nn.Module) -> dict[str, int]:
    """Counts of a prepared model: conv units, of which with a folded BN, merged RepConvs,
    activations and activation quantisers."""
    units = {m for m in model.modules() if isinstance(m, _CallCounted)}
    return {"conv": sum(isinstance(m, QatConv) for m in units),
            "conv_bn": sum(isinstance(m, QatConv) and m.bn is not None for m in units),
            "repconv": sum(isinstance(m, QatRepConv) for m in units),
            "act": sum(isinstance(m, QatAct) for m in units),
            "act_quantisers": sum(isinstance(m, ActFakeQuant) for m in model.modules())}
