"""Handing freed memory back to the OS: for long runs and for DataLoader workers; and running a
memory-hungry step (the dataset scan) in a child process whose whole heap goes back to the OS when
it ends (``call_in_child``).

A leaf module (nothing of the repo imported), so the data pipeline can use it as well as the
trainer and the logging helpers.
"""
from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from loguru import logger

T = TypeVar("T")


def release_free_memory() -> None:
    """Collect reference cycles, then hand the freed heap back to the OS (glibc ``malloc_trim``).

    Validation leaves cycles (matplotlib figures, COCO structures) that the generational GC frees
    late, and glibc keeps freed blocks in its per-thread arenas; a thread started under load (the
    pin-memory thread, a DataLoader iterator) can open a new arena. Trimmed once per epoch, the
    resident memory of a long run tracks what is live instead of stepping up with arena churn.
    Elsewhere than glibc only the collection runs.
    """
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand the freed heap back to the OS (glibc ``malloc_trim``; nothing elsewhere than glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    """glibc, or None (another C library, or no ctypes)."""
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6")
    except (OSError, ImportError):
        return None


def _malloc_trim():
    """glibc's malloc_trim, or None."""
    return getattr(_libc(), "malloc_trim", None)


# -- a step in a child process ----------------------------------------------------------------
_RECORD_KEYS = ("time", "name", "function", "line", "module")  # kept when a child's log is re-emitted
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ChildTraceback(Exception):
    """The traceback of an exception raised in ``call_in_child``'s child (the cause of the one
    raised again in the parent)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]).rstrip()


def can_fork_child() -> bool:
    """Whether ``call_in_child`` can run here: the "fork" start method exists (Linux, macOS) and
    this process is not a daemonic multiprocessing child (e.g. a DataLoader worker), which may not
    have children."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def call_in_child(fn: Callable[..., T], *args: Any, what: str = "child process") -> T:
    """``fn(*args)`` run in a forked child process; its result comes back pickled through a pipe.

    Whatever ``fn`` allocates on the way lives and dies in the child: the parent's heap only gets
    the (pickled, then unpickled) result, so processes forked from the parent later (DataLoader
    workers) do not inherit it. Check ``can_fork_child()`` first.

    Why fork, not spawn or forkserver: ``fn`` and ``args`` are not pickled (a parser holds its
    config and image loader) and nothing is imported again (a spawned child would import torch
    again: seconds). Why it is safe: the child runs only ``fn`` (for the scan: file reads, PIL,
    numpy, a thread pool of its own) and never CUDA or torch.distributed, so a CUDA context or a
    process group the parent may already hold (utils.dist sets the device before the Trainer
    builds its loaders; the model moves to the GPU after) is never touched in the child; locks
    that another thread of the parent (TensorBoard's writer, a store) may hold at the fork are
    reset by their owners' at-fork handlers (loguru's, malloc's, the import lock,
    concurrent.futures'); multiprocessing flushes the standard streams before the fork, and the
    child drops the loguru sinks it inherited without writing to them (file sinks are line
    buffered). The DataLoader workers are forked from the same process later, with more in it.
    (Python >= 3.12 warns when a process with threads forks, as it does for those workers.)

    - Logs: the child's loguru records are re-emitted here, in order, through this process's sinks
      (console, run log file, test sinks), with their level, time, module, function and line.
    - Errors: an exception of the child is raised here with the same type and message, the child's
      traceback as its cause (``ChildTraceback``); one that does not pickle becomes a
      ChildProcessError naming its type and message. A child that ends without a result (killed,
      ``os._exit``) raises ChildProcessError with its exit code or signal.
    - No orphans: anything raised here while the child runs (KeyboardInterrupt included)
      terminates it, and the kernel kills it when the thread that started it dies (Linux
      ``PR_SET_PDEATHSIG``: SIGKILL, SIGTERM without a handler). The child ignores SIGINT (Ctrl-C
      reaches the whole process group; the parent decides) and dies of SIGTERM.
    """
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, fn, args, os.getpid()), name=what, daemon=True)
    proc.start()
    send.close()
    msg: tuple = ("",)
    try:
        while True:
            try:
                msg = receive.recv()
            except EOFError:
                proc.join()
                raise ChildProcessError(f"{what} (pid {proc.pid}) ended without a result: "
                                        f"{_exit_text(proc.exitcode)}") from None
            if msg[0] != "log":
                break
            _emit(*msg[1:])
    finally:
        receive.close()
        _end(proc, done=msg[0] in ("ok", "error"))
    if msg[0] == "error":
        raise msg[1] from ChildTraceback(msg[2])
    return msg[1]


def _child_main(conn: Any, fn: Callable, args: tuple, parent: int) -> None:
    """The child: die with the parent, forward the logs, send ("ok", result) or ("error", ...)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever flag-only handler the parent had
    except ValueError:  # not the main thread (cannot happen after a fork, which keeps only the caller)
        pass
    _die_with_parent(parent)
    gc.freeze()  # the parent's objects: a collection here would copy their pages for nothing
    logger.remove()  # the inherited sinks (the parent's copies stay open); enqueued ones are skipped
    logger.add(functools.partial(_forward, conn), level=0, format="{message}", catch=True)
    try:
        result: tuple = ("ok", fn(*args))
        conn.send(result)
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(("error", _portable(e), traceback.format_exc()))
    finally:
        conn.close()


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that forked it dies (Linux; elsewhere nothing)."""
    prctl = getattr(_libc(), "prctl", None)
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _forward(conn: Any, message: Any) -> None:
    """A loguru sink of the child: the record's level, text and origin to the parent."""
    r = message.record
    text = r["message"]
    if r["exception"] is not None:
        text += "\n" + "".join(traceback.format_exception(*r["exception"])).rstrip()
    extra = dict(r["extra"])
    try:
        pickle.dumps(extra)
    except Exception:  # noqa: BLE001 - bound values that do not pickle are left out
        extra = {}
    conn.send(("log", r["level"].name, r["level"].no, text, {k: r[k] for k in _RECORD_KEYS}, extra))


def _emit(level: str, no: int, text: str, origin: dict, extra: dict) -> None:
    """Log a child's record here (the child's time, module, function and line)."""
    def patch(record: dict) -> None:
        record.update(origin)
        record["extra"].update(extra)

    try:
        logger.level(level)
    except ValueError:  # a level the child added: its number
        level = no
    logger.patch(patch).log(level, text)


def _portable(e: BaseException) -> BaseException:
    """``e`` when it pickles back to the same type and message, else a ChildProcessError saying it."""
    try:
        back = pickle.loads(pickle.dumps(e))
        if type(back) is type(e) and str(back) == str(e):
            return e
    except Exception:  # noqa: BLE001 - any pickling failure
        pass
    return ChildProcessError(f"{type(e).__name__}: {e}")


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def _end(proc: Any, done: bool) -> None:
    """Reap the child: it exits by itself once it has sent its result, else it is terminated."""
    if done:
        proc.join(60)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    proc.close()
