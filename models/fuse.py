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
        if callable(getattr(module, "fuse", None)):
            module.fuse()
    return model


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
