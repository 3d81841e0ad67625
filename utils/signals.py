"""Stop requests from SIGTERM and SIGINT, as schedulers and users send them.

``stop_on_signals(request)``: while the block runs, SIGTERM and SIGINT call ``request(signum)`` and
nothing else. The handler only flags: one that logged could interrupt a log call in progress
(loguru refuses the re-entry and prints "Logging error in Loguru Handler"); the caller says it at
its next safe point. SIGTERM may come several times (under SLURM both the scheduler and torchrun
send it to a rank): each one only repeats the request. A second Ctrl-C stops at once (the handler
in place before, KeyboardInterrupt by default). Off the main thread, where handlers cannot be set,
nothing is installed.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_on_signals(request: Callable[[int], None]) -> Iterator[None]:
    """Route SIGTERM / SIGINT to ``request(signum)`` inside the block; the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, _frame) -> None:
        if signum == signal.SIGINT:  # the next Ctrl-C goes to the previous handler: stops at once
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
        request(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
