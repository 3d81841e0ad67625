"""The fake quantisers and QAT modules that simulate TFLite INT8 (core/deploy/quant.py puts them
into a model): per-channel symmetric int8 weights of BN-folded convolutions, per-tensor affine int8
activations with min/max observers, and TFLite's fixed 1/256 int8 sigmoid."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import Pool, RepConv, UpSample

A_QMIN, A_QMAX = -128, 127  # activation integers (int8, affine)
W_QMAX = 127  # weight integers in [-W_QMAX, W_QMAX] (int8, symmetric: TFLite never uses -128)
FUSED_ACTS = (nn.ReLU, nn.ReLU6)  # TFLite fuses these into the conv / add before them
ACTS = FUSED_ACTS + (nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.Mish)
# Ops whose int8 output keeps the input's scale in TFLite (no new quantisation point).
PASS_THROUGH = (nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.Identity, nn.Dropout, Pool, UpSample)


# -- fake quantisers ------------------------------------------------------------------------
def fake_quant_weight(w: Tensor) -> Tensor:
    """w [co, ...] fake-quantised per output channel, symmetric int8: ``round(w / s) * s`` with
    ``s = max|w_c| / 127`` per channel. Straight-through gradient."""
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.ndim))) / W_QMAX).clamp_min(1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -W_QMAX, W_QMAX)


class ActFakeQuant(nn.Module):
    """Per-tensor affine int8 fake quantisation of an activation, with a min/max observer.

    Observes in training mode (moving average of the batch min and max, weight ``averaging``) and
    while ``calibrating`` (running min and max, as the TFLite calibrator); fixed in eval mode. The
    range always contains 0. It passes x through until it has observed a batch, and always when
    ``enabled`` is False (float mode). Buffers: ``min_val``, ``max_val``, ``observed``.
    """

    def __init__(self, averaging: float = 0.01) -> None:
        super().__init__()
        self.averaging = averaging
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))
        self.calibrating = False
        self.enabled = True

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        lo_b, hi_b = torch.aminmax(x.detach().float())
        if self.calibrating:
            lo, hi = torch.minimum(lo_b, self.min_val), torch.maximum(hi_b, self.max_val)
        else:
            lo = self.min_val + self.averaging * (lo_b - self.min_val)
            hi = self.max_val + self.averaging * (hi_b - self.max_val)
        # The first batch sets the range; torch.where avoids a host sync on the flag.
        self.min_val.copy_(torch.where(self.observed, lo, lo_b))
        self.max_val.copy_(torch.where(self.observed, hi, hi_b))
        self.observed.fill_(True)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero point int32) of the observed range, TFLite style."""
        lo, hi = self.min_val.clamp(max=0.0), self.max_val.clamp(min=0.0)
        scale = ((hi - lo) / (A_QMAX - A_QMIN)).clamp_min(1e-8)
        zero = (A_QMIN - torch.round(lo / scale)).clamp(A_QMIN, A_QMAX).to(torch.int32)
        return scale, zero

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.training or self.calibrating:
            self.observe(x)
        scale, zero = self.qparams()
        q = torch.fake_quantize_per_tensor_affine(x, scale.to(x.dtype), zero, A_QMIN, A_QMAX)
        return torch.where(self.observed, q, x)

    def extra_repr(self) -> str:
        return f"range=[{float(self.min_val):.4g}, {float(self.max_val):.4g}], observed={bool(self.observed)}"


class SigmoidFakeQuant(nn.Module):
    """TFLite's int8 LOGISTIC output: scale 1/256, zero point -128 (fixed, nothing to observe)."""

    enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return torch.fake_quantize_per_tensor_affine(x, 1.0 / 256, A_QMIN, A_QMIN, A_QMAX)


def _fq_list(flags: list[bool]) -> nn.ModuleList:
    """One quantiser per call of a module (Identity where TFLite has no new int8 tensor)."""
    return nn.ModuleList(ActFakeQuant() if f else nn.Identity() for f in flags)


# -- QAT modules ----------------------------------------------------------------------------
class _CallCounted(nn.Module):
    """A module with one set of quantisers per call within a forward of the model (the counter is
    reset by the model's pre-hook): each call produces a different TFLite tensor."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.call = calls, 0
        self.quantise_weights = True

    def next_call(self) -> int:
        i = self.call % self.calls
        self.call += 1
        return i


def _fold_scale(bn: nn.BatchNorm2d) -> Tensor:
    """gamma / sqrt(running_var + eps) [C]; channels with a zero factor use 1 (their folded weight
    is 0 and their output the BN bias either way), so dividing by it is always defined."""
    sf = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.where(sf.abs() > 1e-12, sf, torch.ones_like(sf))


def conv_bn_fake_quant(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: Tensor,
                       quantise: bool = True) -> Tensor:
    """bn(conv(x)) with the weight fake-quantised as the BN-folded weight ``W * gamma / sigma``.

    The folded weight uses the running sigma; the conv output is scaled back before the BN, which
    then normalises with batch statistics (training) or folds exactly (eval), as torch.ao's
    ConvBn2d. [B, ci, H, W] -> [B, co, H', W'].
    """
    if not quantise:
        y = conv(x)
        return y if bn is None else bn(y)
    if bn is None:
        return conv._conv_forward(x, fake_quant_weight(conv.weight), conv.bias)
    sf = _fold_scale(bn)
    y = conv._conv_forward(x, fake_quant_weight(conv.weight * sf.view(-1, 1, 1, 1)), None)
    y = y / sf.view(1, -1, 1, 1)
    if conv.bias is not None:
        y = y + conv.bias.view(1, -1, 1, 1)
    return bn(y)


def folded_weight_bias(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the single conv equal to bn(conv(.)) in eval mode (differentiable)."""
    b = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    if bn is None:
        return conv.weight, b
    sf = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * sf.view(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * sf


def _activate(act: nn.Module, x: Tensor, sigmoid_fq: nn.Module | None) -> Tensor:
    """act(x); SiLU as x * q(sigmoid(x)), the TFLite LOGISTIC + MUL pair."""
    if sigmoid_fq is not None:
        return x * sigmoid_fq(torch.sigmoid(x))
    return act(x)


class QatConv(_CallCounted):
    """A Conv2d (with the BatchNorm2d that followed it, if any) as it runs in TFLite int8.

    Children: ``conv`` and ``bn`` (the original modules), ``input_fq`` / ``output_fq`` (per call).
    ``bn_paths``: where the BatchNorm sat in the model (restored by :func:`strip_qat`).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, bn_paths: list[str],
                 input_fq: list[bool], output_fq: list[bool]) -> None:
        super().__init__(len(input_fq))
        self.conv, self.bn, self.bn_paths = conv, bn, list(bn_paths)
        self.input_fq, self.output_fq = _fq_list(input_fq), _fq_list(output_fq)

    def forward(self, x: Tensor) -> Tensor:
        i = self.next_call()
        y = conv_bn_fake_quant(self.conv, self.bn, self.input_fq[i](x), self.quantise_weights)
        return self.output_fq[i](y)

    @torch.no_grad()
    def deployed_weight(self) -> Tensor:
        """The int8-grid folded weight the export will hold (eval-mode BN): [co, ci / g, k, k]."""
        return fake_quant_weight(folded_weight_bias(self.conv, self.bn)[0])


class QatAct(_CallCounted):
    """An activation with its int8 output (and input, after an op that is not quantised) per call.

    Children: ``act`` (the original module), ``input_fq`` / ``output_fq`` (per call), ``sigmoid_fq``
    (SiLU only).
    """

    def __init__(self, act: nn.Module, input_fq: list[bool], output_fq: list[bool]) -> None:
        super().__init__(len(input_fq))
        self.act = act
        self.input_fq, self.output_fq = _fq_list(input_fq), _fq_list(output_fq)
        self.sigmoid_fq = SigmoidFakeQuant() if isinstance(act, nn.SiLU) else None

    def forward(self, x: Tensor) -> Tensor:
        i = self.next_call()
        return self.output_fq[i](_activate(self.act, self.input_fq[i](x), self.sigmoid_fq))


class QatRepConv(_CallCounted):
    """act(ConvNA_kxk(x) + ConvNA_1x1(x)) (``models.blocks.RepConv``) as the single merged k x k
    convolution the export runs. Child ``rep``: the original RepConv; quantisers per call.

    Running BN statistics (eval, or BN frozen): the merged folded weight is fake-quantised, as
    deployed. Batch statistics (BN still training): each branch is fake-quantised on its own and
    normalised by its BN, which keeps the BN statistics learning.
    """

    def __init__(self, rep: RepConv, input_fq: list[bool], conv_fq: list[bool],
                 output_fq: list[bool]) -> None:
        super().__init__(len(input_fq))
        self.rep = rep
        self.input_fq, self.conv_fq = _fq_list(input_fq), _fq_list(conv_fq)
        self.output_fq = _fq_list(output_fq)
        self.sigmoid_fq = SigmoidFakeQuant() if isinstance(rep.act, nn.SiLU) else None

    def merged_weight_bias(self) -> tuple[Tensor, Tensor]:
        """(weight [co, ci, k, k], bias [co]) of the merged eval-mode convolution (differentiable)."""
        w1, bias1 = folded_weight_bias(self.rep.conv1.conv, self.rep.conv1.bn)
        w2, bias2 = folded_weight_bias(self.rep.conv2.conv, self.rep.conv2.bn)
        pad = (w1.shape[-1] - w2.shape[-1]) // 2
        return w1 + F.pad(w2, [pad] * 4), bias1 + bias2

    def forward(self, x: Tensor) -> Tensor:
        i = self.next_call()
        x = self.input_fq[i](x)
        r = self.rep
        if not self.quantise_weights:
            y = r.conv1(x) + r.conv2(x)
        elif r.conv1.bn.training or r.conv2.bn.training:
            y = (conv_bn_fake_quant(r.conv1.conv, r.conv1.bn, x)
                 + conv_bn_fake_quant(r.conv2.conv, r.conv2.bn, x))
        else:
            w, b = self.merged_weight_bias()
            c = r.conv1.conv
            y = F.conv2d(x, fake_quant_weight(w), b, c.stride, c.padding, c.dilation, c.groups)
        y = _activate(r.act, self.conv_fq[i](y), self.sigmoid_fq)
        return self.output_fq[i](y)


class QatState(nn.Module):
    """``model.qat``: the input quantiser and the BN-frozen flag (a buffer, so copies keep it)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_fq = ActFakeQuant()
        self.register_buffer("bn_frozen", torch.zeros((), dtype=torch.bool))
