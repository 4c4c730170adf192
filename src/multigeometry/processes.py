"""Clean kills: SIGTERM unwinds a stage like an error (so staging folders are removed and runs are closed), and worker
processes exit when the process that started them dies, whatever killed it (kill -9 included)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, past `except Exception`, running every `finally` on its way."""


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def exit_with_parent(parent: int) -> None:
    """Make this (worker) process exit when its parent, process `parent`, dies: the kernel's parent-death signal on
    Linux, and a thread that watches the parent's id everywhere (a worker whose parent was killed is re-parented)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def terminate_pool(pool: Any) -> None:
    """Stop a `ProcessPoolExecutor` now: cancel what has not started and kill its workers (its own shutdown would
    wait for the running tasks)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=10)
