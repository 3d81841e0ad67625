"""Stop requests and in-epoch saves, decided by all ranks together.

A stop request (SIGTERM / SIGINT, set from a signal handler) and rank 0's save interval
(``train.save_interval_min``) travel in the training step's one all-reduce per optimizer step
(``local`` gives this rank's flags to it), so every rank stops, or saves, at the same step: a rank
deciding alone would leave the others waiting in a collective forever. Between epochs
``stop_agreed`` asks the ranks with its own all-reduce.
"""
from __future__ import annotations

import signal
import time

from loguru import logger

from utils.dist import DistInfo, any_rank


class RunControl:
    def __init__(self, dist: DistInfo, save_interval_min: float) -> None:
        self.dist, self.save_interval_min = dist, save_interval_min
        self.signal: int | None = None  # the stop request, set by request()
        self._announced = False
        self._saved_at = time.monotonic()

    def request(self, signum: int) -> None:
        """Signal-safe: only sets a flag (a handler that logged could interrupt a log call in
        progress); the trainer says it once the ranks agreed."""
        self.signal = signum

    def local(self) -> tuple[bool, bool]:
        """(stop requested, save due) on this rank alone, no collective: the training step agrees them
        over the ranks at its next optimizer step (core/train/step.py, ``TrainStep.flags``), in the
        all-reduce it does anyway. Rank 0's clock decides the save."""
        minutes = self.save_interval_min
        due = self.dist.is_main and minutes > 0 and time.monotonic() - self._saved_at >= 60 * minutes
        return self.signal is not None, due

    def stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (an all-reduce: every rank calls it at the same point)."""
        stop = any_rank(self.signal is not None, device=self.dist.device)[0]
        if stop:
            self.announce()
        return stop

    def saved(self) -> None:
        """last.pth was just written: the save interval starts again."""
        self._saved_at = time.monotonic()

    def announce(self) -> None:
        if self.signal is not None and not self._announced:
            self._announced = True
            again = " (Ctrl-C again stops at once)" if self.signal == signal.SIGINT else ""
            logger.warning(f"{signal.Signals(self.signal).name} received: finishing the current step, "
                           f"then writing last.pth and exiting{again}")
