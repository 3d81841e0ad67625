"""Which epochs' weights are kept, and when a run stops early: the one place that decides "best".

``Selection.update(epoch, score)`` after each validation of the monitored metric
(``train.monitor``) says whether the epoch is the new best (best.pth), keeps the top-K files
(``train.save_top_k``) and decides early stopping (``train.patience`` epochs without an
improvement of more than ``train.min_delta``). A NaN or a negative value ("not measurable") is
never best.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import TopKCheckpoints
from utils.run_info import improves


@dataclass
class Verdict:
    """What one validation decided: the monitored ``score``, the best before it (-1 = none) and its
    epoch, whether it ``improved``, and why the run stops early ("" = it does not)."""

    score: float
    best_before: float
    best_epoch_before: int
    improved: bool
    stop_reason: str


class Selection:
    def __init__(self, run_dir: Path, monitor: str, patience: int = 0, min_delta: float = 0.0,
                 top_k: int = 0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best, self.best_epoch = -1.0, 0  # -1: no measurable value yet; epoch 1-based, 0 = none
        self.stop_reason = ""
        self.top_k = TopKCheckpoints(run_dir, top_k, monitor)

    def update(self, epoch: int, score: float, last: bool = False) -> Verdict:
        """Record ``score`` of ``epoch``; early stopping is not decided at the ``last`` epoch."""
        before, before_epoch = self.best, self.best_epoch
        improved = improves(score, self.best, self.min_delta)
        if improved:
            self.best, self.best_epoch = float(score), int(epoch)
        self.stop_reason = ""
        if not last and self.patience > 0 and epoch - self.best_epoch >= self.patience:
            best = f"best {self.best:.4f} at epoch {self.best_epoch}" if self.best >= 0 else "never measurable"
            self.stop_reason = (f"{self.monitor} has not improved by more than min_delta={self.min_delta:g} for "
                                f"{epoch - self.best_epoch} epochs (train.patience={self.patience}); {best}")
        return Verdict(float(score), before, before_epoch, improved, self.stop_reason)

    def stopped(self, epoch: int) -> bool:
        """The run ended early at ``epoch`` and a resume must not train on (patience unchanged)."""
        return bool(self.stop_reason) and self.patience > 0 and epoch - self.best_epoch >= self.patience

    def finished(self, epoch: int, epochs: int) -> str:
        """Why a run at ``epoch`` has nothing left to train ("" = it has): all ``epochs`` done, or
        stopped early with the patience unchanged."""
        if epoch >= epochs:
            return (f"this run already trained {epoch} of {epochs} epochs; pass train.epochs=N (N > {epoch}) "
                    "to extend it")
        if self.stopped(epoch):
            return (f"this run stopped early after epoch {epoch}: {self.stop_reason}; pass a larger "
                    "train.patience (or 0) to continue it")
        return ""

    def line(self, verdict: Verdict, epoch: int) -> str:
        """The log line of a verdict: the score, the best, and the early-stopping count."""
        text = f"{self.monitor} {verdict.score:.4f}: " + (
            "new best" if verdict.improved else f"best {self.best:.4f} at epoch {self.best_epoch}"
            if self.best >= 0 else "not measurable yet")
        if self.patience > 0:
            text += f"; early stopping: {epoch - self.best_epoch} of {self.patience} epochs without improvement"
        return text

    def state_dict(self) -> dict:
        return {"best_score": float(self.best), "best_epoch": int(self.best_epoch), "stop_reason": self.stop_reason,
                "top_k": self.top_k.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch = float(d.get("best_score", -1.0)), int(d.get("best_epoch", 0))
        self.stop_reason = str(d.get("stop_reason", ""))
        self.top_k.load_state_dict(d.get("top_k", []))
