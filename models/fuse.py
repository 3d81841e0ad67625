"""Deployment form of a network: re-parameterised (BN folded, RepConv merged, implicit knowledge
folded) and, for graph networks, without the PGI auxiliary branch.
"""
from __future__ import annotations

import torch
from torch import nn

from models.nets.graph import GraphNet


@torch.no_grad()
def fuse_model(model: nn.Module) -> nn.Module:
    """Fuse every block that has a ``fuse()`` (models.blocks, the v7 head), in place; eval mode.

    Children are fused before their parents (a RepConv merges the already folded branches of its
    two ConvNA children). The result computes the same function in eval mode; its state-dict
    names differ from the unfused model's, so load weights before fusing.
    """
    model.eval()
    for module in reversed(list(model.modules())):
        fuse = getattr(module, "fuse", None)
        if callable(fuse) and not isinstance(fuse, nn.Module):  # a method, not a child named "fuse"
            fuse()
    fold_batchnorm(model)
    return model


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) in eval mode: the BN statistics and affine go into weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d by the naming conventions of the
    simple YOLO's modules, in place; returns how many were folded.

    Pairs: children ``conv`` / ``bn`` (ConvBNAct), ``convN`` / ``bnN`` (ResNet blocks and stem,
    whose forwards apply ``bnN`` right after ``convN``), and consecutive ``Conv2d, BatchNorm2d``
    items of an ``nn.Sequential`` (ResNet downsample). The BatchNorm becomes an Identity.
    """
    folded = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.Conv2d) or not name.startswith("conv"):
                continue
            bn = children.get("bn" + name[len("conv"):])
            if isinstance(bn, nn.BatchNorm2d) and bn.num_features == child.out_channels:
                _fold_into(child, bn)
                setattr(module, "bn" + name[len("conv"):], nn.Identity())
                folded += 1
        if isinstance(module, nn.Sequential) and not any(n.startswith("bn") for n in children):
            items = list(module)
            for i in range(len(items) - 1):
                if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
                    _fold_into(items[i], items[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
    return folded


@torch.no_grad()
def deploy_model(model: GraphNet) -> GraphNet:
    """A new, fused, eval-mode copy of ``model`` without the auxiliary branch.

    Builds the same class with aux=False, loads the main-branch weights of ``model`` (auxiliary
    keys are dropped) and fuses it. Its output equals ``model.eval()(x)``.
    """
    deployed = type(model)(model.num_classes, coder=model.coder, aux=False)
    own = deployed.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in own}
    deployed.load_state_dict(state, strict=True)  # every main-branch tensor must be present
    device = next(model.parameters()).device
    return fuse_model(deployed.to(device))
