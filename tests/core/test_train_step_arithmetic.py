"""TrainStep's arithmetic on a one-weight-vector model, worked by hand: gradient clipping to
train.grad_clip, and gradient accumulation averaging the micro-batches of one optimizer step."""
import pytest
import torch
from torch import nn

from core.train.step import TrainStep


class Line(nn.Module):
    """raw [B, 2] = w * mean(image): the loss sum(raw) has gradient sum_b mean(image_b) per weight."""

    strides = [8]

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.w * images.flatten(1).mean(1, keepdim=True)

    def priors(self, hw, device):
        return None


class Schedule:
    """The scheduler's interface TrainStep reads: images per optimizer step as micro-batches."""

    def __init__(self, accumulate: int) -> None:
        self.schedule, self.steps = self, 0
        self.accumulate = accumulate

    def accumulate_at(self, step: int) -> int:
        return self.accumulate

    def step(self) -> None:
        self.steps += 1


def criterion(raw, targets, priors, max_gt=None):
    loss = raw.sum()
    return loss, {"sum": loss.detach()}


def make(w, grad_clip=0.0, accumulate=1) -> TrainStep:
    model = Line(w)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)  # w -= grad
    return TrainStep(model, criterion, opt, Schedule(accumulate), device=torch.device("cpu"), grad_clip=grad_clip)


def images(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n, 3, 4, 4), value)  # float input passes to_input unchanged


NO_TARGETS = torch.zeros(0, 6)


@pytest.mark.parametrize("grad_clip, expected", [
    # One image of mean 5: loss = 5 w0 + 5 w1, gradient (5, 5), norm 5 sqrt(2) = 7.0711.
    (0.0, [1.0 - 5.0, 2.0 - 5.0]),  # no clipping: w - (5, 5)
    (100.0, [1.0 - 5.0, 2.0 - 5.0]),  # norm 7.07 under 100: unchanged
    (1.0, [1.0 - 5.0 / 7.0710678, 2.0 - 5.0 / 7.0710678]),  # scaled to norm 1: (0.7071, 0.7071)
])
def test_gradients_are_clipped_to_the_configured_norm(grad_clip, expected):
    step = make([1.0, 2.0], grad_clip=grad_clip)
    parts = step(images(5.0), NO_TARGETS)
    assert parts["total"] == pytest.approx(5.0 * 1.0 + 5.0 * 2.0)  # loss before the step: 15
    assert step.model.w.tolist() == pytest.approx(expected, abs=1e-5)


def test_accumulated_micro_batches_average_into_one_optimizer_step():
    step = make([10.0, 20.0], accumulate=2)
    step(images(1.0), NO_TARGETS)  # gradient (1, 1), held
    assert step.model.w.tolist() == [10.0, 20.0] and step.last_opt_step == 0
    step(images(3.0), NO_TARGETS)  # gradient (3, 3); the step applies the mean (1 + 3) / 2 = 2
    assert step.model.w.tolist() == pytest.approx([8.0, 18.0]) and step.last_opt_step == 2
    assert step.scheduler.steps == 2  # the schedule advances per iteration, not per optimizer step


def test_flush_steps_with_a_partial_accumulation():
    # The epoch's last batch flushes: one micro-batch of the two, gradient (4, 4) / 2 = (2, 2) -- the
    # loss is divided by the planned count, as every micro-batch was.
    step = make([10.0, 20.0], accumulate=2)
    step(images(4.0), NO_TARGETS, flush=True)
    assert step.model.w.tolist() == pytest.approx([8.0, 18.0]) and step.last_opt_step == 1
