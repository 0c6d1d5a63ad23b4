"""Clients whose input trickles in wait here a moment before epoll watches them again.

A head sent a byte per write would otherwise cost one wake-up and one ``recv`` per
byte, however cheap the parse.  Held back for :data:`DELAY`, the bytes gather in the
socket, so such a client costs one wake-up per DELAY instead: CPU bounded by time,
not by bytes.  Only clients that have already sent many small pieces of one head are
held (the connection decides), so an ordinary head split over two segments never is.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from mogstored.event.step import Client

DELAY = 0.02  # seconds; a person typing a request by hand does not notice


class Later:
    """A FIFO of held clients (all wait the same DELAY) and the one thread that
    re-arms them, started the first time a client is held."""

    def __init__(self, rearm: Callable[[Client], None]) -> None:
        self._rearm = rearm
        self._held: collections.deque[tuple[float, Client]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def hold(self, client: Client) -> None:
        with self._cond:
            self._held.append((time.monotonic() + DELAY, client))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="later", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        held, cond = self._held, self._cond
        while True:
            with cond:
                while not held:
                    cond.wait()
                due, client = held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    cond.wait(wait)
                    continue
                held.popleft()
            self._rearm(client)
