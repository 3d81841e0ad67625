"""utils/signals.py stop_on_signals: the first SIGINT / every SIGTERM only asks for a stop, a second
SIGINT stops at once (the handler in place before: KeyboardInterrupt by default), the handlers come back
after the block, and off the main thread nothing is installed.

Signals are raised with ``signal.raise_signal``: the C handler runs before it returns and the Python
handler right after (``PyErr_CheckSignals``), so each assertion sees every handler that ran.
"""
import signal
import threading

import pytest

from utils.signals import stop_on_signals

SIGINT, SIGTERM = signal.SIGINT, signal.SIGTERM


class Previous:
    """Recording handlers installed for SIGINT and SIGTERM before each block (so a stray signal never
    ends pytest); ``got``: the signals they received."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.handlers = {s: self._record for s in (SIGINT, SIGTERM)}

    def _record(self, signum, _frame) -> None:
        self.got.append(signum)


@pytest.fixture
def previous():
    before = {s: signal.getsignal(s) for s in (SIGINT, SIGTERM)}
    rec = Previous()
    for s, h in rec.handlers.items():
        signal.signal(s, h)
    yield rec
    for s, h in before.items():
        signal.signal(s, h)


def test_first_sigint_only_requests_and_the_second_goes_to_the_previous_handler(previous):
    asked = []
    with stop_on_signals(asked.append):
        signal.raise_signal(SIGINT)
        assert asked == [SIGINT] and previous.got == []  # a stop request, nothing else
        signal.raise_signal(SIGINT)
        assert asked == [SIGINT] and previous.got == [SIGINT]  # stops at once: the previous handler
        signal.raise_signal(SIGTERM)
        assert asked == [SIGINT, SIGTERM] and previous.got == [SIGINT]  # SIGTERM still only requests
    assert signal.getsignal(SIGINT) == previous.handlers[SIGINT]
    assert signal.getsignal(SIGTERM) == previous.handlers[SIGTERM]


def test_second_ctrl_c_raises_keyboard_interrupt_and_the_handlers_come_back(previous):
    signal.signal(SIGINT, signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt
    asked = []
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals(asked.append):
            signal.raise_signal(SIGINT)
            assert asked == [SIGINT]
            signal.raise_signal(SIGINT)
            pytest.fail("the second SIGINT did not stop at once")
    assert asked == [SIGINT]  # the first one asked, and did not raise
    assert signal.getsignal(SIGINT) is signal.default_int_handler  # restored though the block raised
    assert signal.getsignal(SIGTERM) == previous.handlers[SIGTERM]


def test_repeated_sigterm_only_repeats_the_request(previous):
    asked = []
    with stop_on_signals(asked.append):
        for _ in range(3):  # e.g. SLURM and torchrun both forward it
            signal.raise_signal(SIGTERM)
        assert asked == [SIGTERM] * 3 and previous.got == []
        signal.raise_signal(SIGINT)  # the SIGTERMs did not use up the first Ctrl-C
        assert asked == [SIGTERM] * 3 + [SIGINT] and previous.got == []
    signal.raise_signal(SIGTERM)  # after the block: the handler in place before
    signal.raise_signal(SIGINT)
    assert asked == [SIGTERM] * 3 + [SIGINT] and previous.got == [SIGTERM, SIGINT]


def test_off_the_main_thread_nothing_is_installed(previous):
    """A block entered on another thread installs nothing (signal.signal would raise there) and
    signals keep going to the handlers in place."""
    asked, inside, seen, errors = [], threading.Event(), threading.Event(), []

    def worker() -> None:
        try:
            with stop_on_signals(asked.append):
                inside.set()
                assert seen.wait(60)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)
            inside.set()

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(60)
    handlers = {s: signal.getsignal(s) for s in (SIGINT, SIGTERM)}
    signal.raise_signal(SIGTERM)
    signal.raise_signal(SIGINT)
    seen.set()
    t.join(60)
    assert not t.is_alive() and errors == []
    assert handlers == previous.handlers
    assert asked == [] and previous.got == [SIGTERM, SIGINT]
