"""The combined-queue event core (design: ../shared/seeds, cmogstored's queues.txt).

One epoll set per process is the only queue of ready clients.  Acceptor threads
are its producers: blocking ``accept4`` then ``EPOLL_CTL_ADD`` with
``EPOLLONESHOT``.  Worker threads are its consumers: ``epoll_wait`` for one event,
run one step of that client, re-arm it with ``EPOLL_CTL_MOD`` (never ADD).  With
ONESHOT a client is always in exactly one place: armed in the epoll set, running
on one thread, or parked in a device I/O pool (:mod:`mogstored.ioq`), which hands
it back with ``EPOLL_CTL_MOD`` as well.
"""
from __future__ import annotations

import ctypes
import enum
import errno
import os
import select
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol

from mogstored import log
from mogstored.event.expiry import STARVED, relieve

if TYPE_CHECKING:
    from mogstored.process.board import LoadBoard
    from mogstored.store.iopool import IoPool

ONESHOT = select.EPOLLONESHOT
_WANT_READ = select.EPOLLIN | select.EPOLLRDHUP | ONESHOT | select.EPOLLET
_WANT_WRITE = select.EPOLLOUT | ONESHOT | select.EPOLLET
# Level-triggered and writable at once: the client goes to the back of the
# queue of ready clients ("active queue") instead of hogging this thread.
_WANT_ACTIVE = select.EPOLLIN | select.EPOLLOUT | ONESHOT


class Next(enum.Enum):
    """What a client needs after one step."""

    READ = 1  # input
    WRITE = 2  # room in the socket's send buffer
    ACTIVE = 3  # more work ready now: requeue behind the other ready clients
    CLOSE = 4
    PARKED = 5  # held by a queue (fsck) that requeues it later; or a finished task


class Client(Protocol):
    sock: socket.socket
    fd: int

    def step(self, pool: "IoPool | None") -> "Next | IoPool":
        """Run one step; ``pool`` is the I/O pool running it (None on an epoll
        worker).  Returning a pool parks the client there for its next step."""

    def close(self) -> None: ...

    def idle(self) -> bool:
        """True while waiting between requests with nothing buffered."""


_libc = ctypes.CDLL(None, use_errno=True)
_accept4 = _libc.accept4
_accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_accept4.restype = ctypes.c_int
# The signal that kicks an acceptor out of accept4 (EINTR).  USR1 is otherwise a
# no-op, as in cmogstored; its handler does nothing.
KICK_SIGNAL = signal.SIGUSR1


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


class EventQueue:
    """The per-process epoll set, its worker threads and the client table."""

    def __init__(self, nthreads: int) -> None:
        self.ep = select.epoll()
        self.clients: dict[int, Client] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._excess = 0  # worker threads asked to exit
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Level-triggered, no ONESHOT: once written it wakes every waiting
        # worker until enough of them have left.
        self.ep.register(self._stop_fd, select.EPOLLIN)
        self.on_close: Callable[[], None] = lambda: None
        self.resize(nthreads)

    # -- producers -------------------------------------------------------
    def add(self, client: Client) -> None:
        """Queue a new client as waiting to read (acceptor threads only)."""
        self.clients[client.fd] = client
        try:
            self.ep.register(client.fd, _WANT_READ)
        except OSError:
            self._drop(client)

    # -- consumers -------------------------------------------------------
    def requeue(self, client: Client, nxt: "Next | IoPool") -> None:
        """Put a client back where its step said it belongs."""
        if nxt is Next.READ:
            self._mod(client, _WANT_READ)
        elif nxt is Next.WRITE:
            self._mod(client, _WANT_WRITE)
        elif nxt is Next.ACTIVE:
            self._mod(client, _WANT_ACTIVE)
        elif nxt is Next.CLOSE:
            self._drop(client)
        elif nxt is not Next.PARKED:
            nxt.submit(client)

    def run(self, client: Client, pool: "IoPool | None" = None) -> None:
        """Run one step of a client that nobody else holds, then requeue it."""
        try:
            nxt = client.step(pool)
        except Exception as e:  # a bug must cost one connection, not a thread
            log.error(f"client fd={client.fd} failed: {e!r}")
            nxt = Next.CLOSE
        self.requeue(client, nxt)

    def _mod(self, client: Client, events: int) -> None:
        try:
            self.ep.modify(client.fd, events)
        except OSError:
            self._drop(client)

    def _drop(self, client: Client) -> None:
        # Out of the table before the fd number can be reused by accept.
        self.clients.pop(client.fd, None)
        try:
            client.close()
        except Exception as e:  # called from worker and pool threads: they must live on
            log.error(f"closing fd={client.fd} failed: {e!r}")
        self.on_close()

    def _worker(self) -> None:
        poll = self.ep.poll
        clients = self.clients
        stop_fd = self._stop_fd
        while True:
            for fd, _ in poll(-1, 1):
                if fd == stop_fd:
                    if self._leave():
                        return
                    continue
                client = clients.get(fd)
                if client is not None:
                    self.run(client)

    def _leave(self) -> bool:
        with self._lock:
            if self._excess <= 0:
                return False
            self._excess -= 1
            if self._excess == 0:
                try:
                    os.eventfd_read(self._stop_fd)
                except BlockingIOError:
                    pass
            self._threads.discard(threading.current_thread())
            return True

    # -- management ------------------------------------------------------
    @property
    def nthreads(self) -> int:
        with self._lock:
            return len(self._threads) - self._excess

    def resize(self, n: int) -> None:
        """Start or stop worker threads so that ``n`` remain."""
        with self._lock:
            have = len(self._threads) - self._excess
            if n > have:
                take_back = min(self._excess, n - have)
                self._excess -= take_back
                for _ in range(n - have - take_back):
                    t = threading.Thread(target=self._worker, name="epoll", daemon=True)
                    self._threads.add(t)
                    t.start()
            elif n < have:
                self._excess += have - n
                os.eventfd_write(self._stop_fd, 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker thread and wait for them."""
        with self._lock:
            threads = list(self._threads)
        self.resize(0)
        for t in threads:
            t.join(timeout)

    def idle_clients(self) -> list[Client]:
        return [c for c in list(self.clients.values()) if c.idle()]


class Acceptor:
    """Threads doing nothing but blocking accept + EPOLL_CTL_ADD on one listener.

    Blocking accept gives the kernel's wake-one behaviour, which spreads new
    connections evenly over every process sharing the listener while they
    trickle in.  A burst is spread by the worker processes' load board: an
    acceptor whose process holds more connections than another worker's waits
    a moment before accepting again (docs/queues.txt, "Processes").
    """

    board: "LoadBoard | None" = None  # set in a worker process; one per process
    SLACK = 1  # connections a worker may hold beyond the least loaded one
    TURN_WAIT = 0.0005  # seconds between looks at the board
    PATIENCE = 0.01  # give up waiting for a worker that does not accept
    STARVED_PAUSE = 0.01  # out of descriptors: retry accept4 this soon

    def __init__(
        self,
        lsock: socket.socket,
        queue: EventQueue,
        make_client: Callable[[socket.socket], Client],
        nthreads: int,
        on_error: Callable[[OSError], None] = lambda e: None,
    ) -> None:
        self.lsock = lsock
        self.queue = queue
        self.make_client = make_client
        self.on_error = on_error
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
                self._starved(e)
                continue
            # Even if told to stop meanwhile: the client is served (shutdown
            # completes it), as the listener's other holders would have.
            sock = socket.socket(fileno=fd)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.queue.add(self.make_client(sock))

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

    def _starved(self, e: OSError) -> None:
        """Out of descriptors (§3.10): expire idle clients and retry soon; the
        log and the scan happen at most once a second."""
        if e.errno not in STARVED:
            self.on_error(e)
            return
        relieve(self.queue, lambda: self.on_error(e))
        time.sleep(self.STARVED_PAUSE)

    def stop(self) -> None:
        """Kick every thread out of accept4 with a signal and wait for it."""
        self.running = False
        if self.board is not None:
            self.board.withdraw(self.board.index)
        for t in self.threads:
            while t.is_alive():
                if t.ident is not None:
                    try:
                        signal.pthread_kill(t.ident, KICK_SIGNAL)
                    except ProcessLookupError:
                        break
                t.join(0.05)


def install_kick_handler() -> None:
    """A handler that does nothing, so KICK_SIGNAL interrupts accept4."""
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)
    signal.siginterrupt(KICK_SIGNAL, True)
