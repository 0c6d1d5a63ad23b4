"""A set of threads running one loop, resized at run time (epoll workers, pool threads)."""
from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from mogstored.libc import libc

_PR_SET_NAME = 15
_prctl = libc["prctl"]
_prctl.argtypes = [ctypes.c_int, ctypes.c_char_p]
_prctl.restype = ctypes.c_int


def set_thread_name(name: str) -> None:
    """Name the calling OS thread (``/proc/PID/task/TID/comm``, ``top -H``); 15 bytes at most."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


class ThreadSet:
    """Grows by starting threads; shrinks by asking ``excess`` of them to leave,
    which each does the next time it calls :meth:`leave` (under ``lock``)."""

    def __init__(self, name: str, target: Callable[[], None], lock: AbstractContextManager[object],
                 wake: Callable[[int], None]) -> None:
        self.name = name
        self.target = target
        self.lock = lock
        self.wake = wake  # tell n waiting threads to look at ``excess``
        self.threads: set[threading.Thread] = set()
        self.excess = 0  # threads asked to leave

    def resize(self, n: int) -> None:
        """Start or stop threads so that ``n`` remain."""
        with self.lock:
            have = len(self.threads) - self.excess
            if n > have:
                take_back = min(self.excess, n - have)
                self.excess -= take_back
                for _ in range(n - have - take_back):
                    t = threading.Thread(target=self.target, name=self.name, daemon=True)
                    self.threads.add(t)
                    t.start()
            elif n < have:
                self.excess += have - n
                self.wake(have - n)

    def leave(self) -> bool:
        """Called by a thread of the set, holding ``lock``: True if it must exit now."""
        if self.excess <= 0:
            return False
        self.excess -= 1
        self.threads.discard(threading.current_thread())
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread and wait for them."""
        stop_all(self.lock, self.threads, self.resize, timeout)


def stop_all(lock: AbstractContextManager[object], threads: set[threading.Thread],
             resize: Callable[[int], None], timeout: float) -> None:
    """Resize a set of threads to none, then wait for those that were running."""
    with lock:
        running = list(threads)
    resize(0)
    for t in running:
        t.join(timeout)
