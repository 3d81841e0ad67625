"""Nothing in the forward, the assignment, the loss or its backward waits for the device: the sync count
(utils.syncs.SyncCounter: ``.item()``, ``nonzero``, boolean-mask indexing...) is 0 for every model family
and every assigner its head trains with, when the caller gives ``max_gt``; and no constant is made from
Python data there (``torch.tensor([...])``, ``x.new_tensor([...])``: a host-to-device copy on a GPU).
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from configs import load_config
from core.checks import validate
from models import build_loss, build_model
from models.assigners import ASSIGNERS
from utils.syncs import SyncCounter

SIZE = 64
CLASSES = ["a", "b", "c"]
# Every assigner on the head it trains: the simple YOLO for the anchor head, v9-t (main + aux branch) for the
# DFL head, and v7 (the other anchor-head network) with its own method.
CASES = ([("yolo", m) for m, cls in ASSIGNERS.items() if "anchor" in cls.coders]
         + [("v9-t", m) for m, cls in ASSIGNERS.items() if "dfl" in cls.coders] + [("v7", "ratio_grid")])
NETWORKS = ["yolo", "v9-t", "gelan-t", "v7", "rd-9c"]


class PythonConstants(TorchDispatchMode):
    """Counts the tensors made from Python data (``aten::lift_fresh``), with the line that made each."""

    def __init__(self) -> None:
        super().__init__()
        self.where = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name == "aten::lift_fresh":
            import traceback
            frame = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename][-1]
            self.where[f"{frame.filename}:{frame.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def build(name: str, method: str = "auto"):
    """(model in training mode, its criterion) at SIZE px with 3 classes."""
    overrides = [f"model.name={name}", f"assign.method={method}", f"data.img_size={SIZE}",
                 f"data.class_names={CLASSES!r}", "model.pretrained=''"]
    if name == "yolo":
        overrides.append("model.channel_sparsity=0.25")
    cfg = validate(load_config("bccd_yolo_r18", overrides))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    return model, build_loss(cfg, model)


def batch() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images [3, 3, SIZE, SIZE], targets with an ignore region and an image without GTs, max rows per image)."""
    torch.manual_seed(1)
    targets = torch.tensor([[0, 0, 8.0, 8, 40, 30], [0, 1, 30, 20, 62, 50], [1, 2, 20, 24, 60, 60],
                            [1, 0, 2, 2, 20, 16], [1, -1, 30, 0, 64, 30], [1, 1, 4, 30, 30, 62]])
    return torch.rand(3, 3, SIZE, SIZE), targets, 4


@pytest.mark.parametrize("name, method", CASES)
def test_assignment_loss_and_backward_never_wait_for_the_device(name, method):
    model, criterion = build(name, method)
    images, targets, max_gt = batch()
    priors = model.priors((SIZE, SIZE))
    raw = model(images)
    with SyncCounter(trace=True) as syncs, PythonConstants() as constants:
        loss, parts = criterion(raw, targets, priors, max_gt=max_gt)
    assert syncs.total == 0, dict(syncs.where)
    assert not constants.where, dict(constants.where)
    with SyncCounter(trace=True) as syncs:
        loss.backward()
    assert syncs.total == 0, dict(syncs.where)
    # the masks were exercised: positives exist, and the loss and its gradients are finite
    assert torch.isfinite(loss) and parts["box"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_without_max_gt_only_the_padding_reads_the_device():
    """The path of plots and tests (no host-side bound): the GTs and the ignore regions are each padded
    to a count read from the device, after a batch-index check read from it too; nothing else syncs."""
    model, criterion = build("yolo", "nearby_grid")
    images, targets, _ = batch()
    raw = model(images)
    with SyncCounter(trace=True) as syncs:
        criterion(raw, targets, model.priors((SIZE, SIZE)))
    assert syncs.total == 4 and set(syncs.by_op) == {"aten::_local_scalar_dense"}, dict(syncs.where)
    assert all("padding.py" in where for where in syncs.where), dict(syncs.where)


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_never_waits_for_the_device(name):
    model, _ = build(name)
    images = torch.rand(2, 3, SIZE, SIZE)
    model.priors((SIZE, SIZE))  # made once per input size and device, then cached
    for training in (True, False):
        model.train(training)
        with torch.no_grad(), SyncCounter(trace=True) as syncs, PythonConstants() as constants:
            model(images)
            model.priors((SIZE, SIZE))
        assert syncs.total == 0, (training, dict(syncs.where))
        assert not constants.where, (training, dict(constants.where))
