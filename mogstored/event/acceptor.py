"""Acceptor threads: the producers of the event queue.

Blocking accept gives the kernel's wake-one behaviour, which spreads new
connections evenly over every process sharing the listener while they trickle
in.  A burst is spread by the worker processes' load board: an acceptor whose
process holds more connections than another worker's waits a moment before
accepting again (docs/queues.txt, "Processes").
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from mogstored.event.core import EventQueue
from mogstored.event.step import Client
from mogstored.libc import libc

_accept4 = libc["accept4"]
_accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_accept4.restype = ctypes.c_int


def accept4(lfd: int) -> int:
    """accept4(SOCK_NONBLOCK|SOCK_CLOEXEC) that returns EINTR to the caller.

    Python's own ``socket.accept`` retries on EINTR, so an acceptor blocked in it
    could never be told to stop without closing the (shared) listener.
    """
    fd = _accept4(lfd, None, None, socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


class Board(Protocol):
    """The worker processes' shared connection counts (process.board.LoadBoard)."""

    index: int

    def publish(self, count: int) -> None: ...
    def withdraw(self, index: int) -> None: ...
    def least_other(self, unresponsive: dict[int, int]) -> tuple[int, int]: ...


class Acceptor:
    """Threads doing nothing but blocking accept + EPOLL_CTL_ADD on one listener."""

    SLACK = 1  # connections a worker may hold beyond the least loaded one
    TURN_WAIT = 0.0005  # seconds between looks at the board
    PATIENCE = 0.01  # give up waiting for a worker that does not accept

    def __init__(
        self,
        lsock: socket.socket,
        queue: EventQueue,
        make_client: Callable[[socket.socket], Client | None],
        nthreads: int,
        kick_signal: int,
        on_error: Callable[[OSError], None],
        board: Board | None = None,
    ) -> None:
        """``make_client`` returns None for a connection it refused (and closed);
        ``kick_signal`` interrupts accept4 (a no-op handler installed with
        siginterrupt); ``on_error`` gets every failure but EINTR/ECONNABORTED,
        descriptor starvation included; ``board`` is given in a worker process."""
        self.lsock = lsock
        self.queue = queue
        self.make_client = make_client
        self.kick_signal = kick_signal
        self.on_error = on_error
        self.board = board
        self.running = True
        self._unresponsive: dict[int, int] = {}  # see LoadBoard.least_other
        self.threads = [
            threading.Thread(target=self._loop, name="accept", daemon=True) for _ in range(nthreads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        lfd = self.lsock.fileno()
        while self.running:
            self._take_turn()
            try:
                fd = accept4(lfd)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                if e.errno == errno.EAGAIN:  # inherited non-blocking listener
                    os.set_blocking(lfd, True)
                    continue
                if e.errno == errno.EBADF or e.errno == errno.EINVAL:
                    return
                self.on_error(e)
                continue
            # Even if told to stop meanwhile: the client is served (shutdown
            # completes it), as the listener's other holders would have.
            sock = socket.socket(fileno=fd)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = self.make_client(sock)
            if client is not None:
                self.queue.add(client)

    def _take_turn(self) -> None:
        """Let a less loaded worker take the next connection, unless it does not
        within PATIENCE (stopped, or starved of CPU)."""
        board = self.board
        if board is None:
            return
        deadline = time.monotonic() + self.PATIENCE
        while self.running:
            mine = len(self.queue.clients)
            board.publish(mine)
            other, least = board.least_other(self._unresponsive)
            if mine <= least + self.SLACK:
                return
            if time.monotonic() >= deadline:
                # It did not take the turn: stop waiting for it until it accepts again.
                self._unresponsive[other] = least
                return
            time.sleep(self.TURN_WAIT)

    def stop(self) -> None:
        """Kick every thread out of accept4 with a signal and wait for it."""
        self.running = False
        if self.board is not None:
            self.board.withdraw(self.board.index)
        for t in self.threads:
            while t.is_alive():
                if t.ident is not None:
                    try:
                        signal.pthread_kill(t.ident, self.kick_signal)
                    except ProcessLookupError:
                        break
                t.join(0.05)
