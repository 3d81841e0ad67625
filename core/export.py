"""Export of a trained detector to ONNX (and, through it, TFLite): the deployment graph and its contract.

The exported graph takes ``images`` [B, 3, H, W] float in [0, 1] (RGB, letterboxed to the
training size, as the data pipeline makes them) and returns one tensor ``output0``
[B, 4 + num_classes, anchors]: rows 0..3 are the box centre x, centre y, width and height in
input pixels, the following rows the class scores after sigmoid (for the anchor head, objectness
times class probability). This is the layout YOLOv9 deployments expect; ``decode_output0`` turns
it back into the (xyxy boxes, scores) pair that ``models.postprocess`` takes, so every runtime
shares the PyTorch path's post-processing.

Before export the network is put in its deployment form: graph networks lose the auxiliary
(PGI) branch and are re-parameterised (``models.fuse.deploy_model``), the simple YOLO is fused
in place (``fuse_model``).

The ONNX file carries what a runtime needs to be used from the file alone, as metadata
(``metadata_props``): ``config`` (the training config as JSON), ``class_names``,
``category_ids`` (both JSON lists), ``img_size`` ([H, W]), ``layout`` and ``exported_by``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from models.fuse import deploy_model, fuse_model
from models.nets.graph import GraphNet

LAYOUT = "output0[B,4+nc,N]: cx,cy,w,h input pixels; class scores after sigmoid"


class ExportModel(nn.Module):
    """images [B, 3, H, W] -> output0 [B, 4 + nc, N] (see module docstring) for a fixed H, W.

    The priors (cell centres, strides, anchors) of the input size are constants of the graph.
    """

    def __init__(self, net: nn.Module, img_hw: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.img_hw = (int(img_hw[0]), int(img_hw[1]))

    def forward(self, images: Tensor) -> Tensor:
        boxes, scores = self.net.decode(self.net(images), self.img_hw)
        xy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat((xy, wh, scores.to(boxes.dtype)), -1).transpose(1, 2)


def deployment_form(model: nn.Module) -> nn.Module:
    """A fused, eval-mode copy of ``model`` without training-only branches (``model`` is untouched)."""
    model = model.eval()
    if isinstance(model, GraphNet):
        return deploy_model(model)
    return fuse_model(copy.deepcopy(model))


def decode_output0(output0: Tensor) -> tuple[Tensor, Tensor]:
    """output0 [B, 4 + nc, N] -> (boxes [B, N, 4] xyxy input pixels, scores [B, N, nc]), float32."""
    out = output0.float().transpose(1, 2)
    xy, half = out[..., :2], out[..., 2:4] * 0.5
    return torch.cat((xy - half, xy + half), -1), out[..., 4:]


def export_metadata(cfg, img_hw: tuple[int, int]) -> dict[str, str]:
    """The metadata stored in an exported file (see module docstring); every value a string."""
    from core.evaluator import coco_category_ids
    return {"config": json.dumps(cfg.to_dict()), "class_names": json.dumps(list(cfg.data.class_names)),
            "category_ids": json.dumps(coco_category_ids(cfg)), "img_size": json.dumps(list(img_hw)),
            "layout": LAYOUT, "exported_by": "yolo-research main.py --task export"}


def export_onnx(model: nn.Module, path: str | Path, img_hw: tuple[int, int], opset: int = 17,
                dynamic: bool = True, half: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write the deployment form of ``model`` as ONNX to ``path``; returns the path.

    dynamic: the batch dimension is symbolic ("batch"); otherwise it is 1. half: FP16 weights and
    input (the graph is traced on CPU in FP16; use FP16 files with a runtime that runs FP16).
    metadata: extra ``metadata_props`` (``export_metadata``).
    """
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportModel(deployment_form(model).cpu(), img_hw).eval()
    images = torch.zeros(1, 3, *img_hw)
    if half:
        wrapper, images = wrapper.half(), images.half()
    dynamic_axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic else None
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(wrapper, (images,), str(tmp), opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load(str(tmp))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path
