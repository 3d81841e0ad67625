"""``train.freeze``: frozen weights and BatchNorm statistics for the first ``train.freeze_epochs``
epochs (0 = the whole run), then thawed; the log says what and when."""
from __future__ import annotations

from loguru import logger
from torch import nn

from utils.optim import freeze_norm_stats, freeze_plan, set_frozen


class FreezeSchedule:
    def __init__(self, model: nn.Module, entries: list[str], epochs: int) -> None:
        self.model, self.entries, self.epochs = model, list(entries), epochs
        self.plan = freeze_plan(model, entries)
        self.frozen: bool | None = None  # None until the first set_epoch

    def set_epoch(self, epoch: int) -> bool:
        """Freeze or thaw for ``epoch`` (0-based). True when the set of trainable parameters changed
        (a DDP wrapper registers them when it wraps: the caller wraps again)."""
        frozen = bool(self.plan.params) and (self.epochs == 0 or epoch < self.epochs)
        if frozen == self.frozen:
            return False
        if frozen:
            until = (f"until epoch {self.epochs} (thawing at the start of epoch {self.epochs + 1})"
                     if self.epochs else "for the whole run")
            logger.info(f"train.freeze: frozen {until}: {'; '.join(self.plan.summary)}; BatchNorm "
                        f"statistics of {len(self.plan.norms)} layers frozen too")
        elif self.plan.params:
            logger.info(f"epoch {epoch + 1}: train.freeze thawed {len(self.plan.params)} tensors "
                        f"({', '.join(map(repr, self.entries))}); they train from now on")
        set_frozen(self.model, self.plan, frozen)
        self.frozen = frozen
        return True

    def train_mode(self) -> None:
        """model.train(), keeping the frozen BatchNorm layers in eval mode (statistics unchanged)."""
        self.model.train()
        if self.frozen:
            freeze_norm_stats(self.model, self.plan)

    # The plan's parameter and norm lists (what tests and logs inspect).
    @property
    def params(self) -> list:
        return self.plan.params

    @property
    def norms(self) -> list:
        return self.plan.norms
