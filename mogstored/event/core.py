"""The combined-queue event core (docs/queues.txt, after cmogstored's queues.txt).

One epoll set per process is the only queue of ready clients.  Acceptor threads
(:mod:`mogstored.event.acceptor`) are its producers: blocking ``accept4`` then
``EPOLL_CTL_ADD`` with ``EPOLLONESHOT``.  Worker threads are its consumers:
``epoll_wait`` for a few events, run one step of each of those clients, re-arm
each with ``EPOLL_CTL_MOD`` (never ADD).  With ONESHOT a client is always in exactly one
place: armed in the epoll set, running on one thread, or parked in a device I/O
pool, which hands it back with ``EPOLL_CTL_MOD`` as well.
"""
from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

from mogstored import log
from mogstored.event.later import Later
from mogstored.event.step import Client, Next, Pool
from mogstored.event.threads import ThreadSet, set_thread_name

ONESHOT = select.EPOLLONESHOT
_WANT_READ = select.EPOLLIN | select.EPOLLRDHUP | ONESHOT | select.EPOLLET
_WANT_WRITE = select.EPOLLOUT | ONESHOT | select.EPOLLET
# Level-triggered and writable at once: the client goes to the back of the
# queue of ready clients ("active queue") instead of hogging this thread.
_WANT_ACTIVE = select.EPOLLIN | select.EPOLLOUT | ONESHOT
# Next's members as module names: an Enum class attribute costs ~8 global look-ups,
# and run() compares a few per request.
_RUN, _READ, _WRITE, _ACTIVE, _CLOSE, _LATER = Next.RUN, Next.READ, Next.WRITE, Next.ACTIVE, Next.CLOSE, Next.LATER
# Events taken per epoll_wait.  A process has one worker (process/server.py), so the
# events it holds would wait for it anyway; each ONESHOT event is its client's only
# one, and a client is closed only by the thread running it, so no fd number in a
# batch can be reused under it.  Saves an epoll_wait per request under load (paired
# runs, pinned small GET: 5 % less server CPU).
EVENTS_PER_WAIT = 8


class EventQueue:
    """The per-process epoll set, its worker threads and the client table."""

    def __init__(self, nthreads: int, on_close: Callable[[], None] = lambda: None) -> None:
        self.ep = select.epoll()
        self.clients: dict[int, Client] = {}
        self.on_close = on_close  # a client left the table (shutdown waits for an empty one)
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Level-triggered, no ONESHOT: once written it wakes every waiting
        # worker until enough of them have left.
        self.ep.register(self._stop_fd, select.EPOLLIN)
        self._lock = threading.Lock()
        self._workers = ThreadSet("epoll", self._worker, self._lock,
                                  lambda n: os.eventfd_write(self._stop_fd, 1))
        self._workers.resize(nthreads)
        self._later = Later(lambda client: self._mod(client, _WANT_READ))

    # -- producers -------------------------------------------------------
    def add(self, client: Client) -> None:
        """Queue a new client as waiting to read (acceptor threads only)."""
        self.clients[client.fd] = client
        try:
            self.ep.register(client.fd, _WANT_READ)
        except OSError:
            self._drop(client)

    # -- consumers -------------------------------------------------------
    def run(self, client: Client, pool: Pool | None = None) -> None:
        """Run steps of a client that nobody else holds, hopping to its pool
        when its state says so, then requeue it where the last step said."""
        try:
            while True:
                if client.state.on_pool and pool is not client.pool:
                    client.pool.submit(client)
                    return
                nxt = client.step(pool)
                if nxt is not _RUN:
                    break
        except Exception as e:  # noqa: BLE001  # a bug must cost one connection, not a thread
            log.error(f"client fd={client.fd} failed: {e!r}")
            nxt = Next.CLOSE
        if nxt is _READ:
            self._mod(client, _WANT_READ)
        elif nxt is _WRITE:
            self._mod(client, _WANT_WRITE)
        elif nxt is _ACTIVE:
            self._mod(client, _WANT_ACTIVE)
        elif nxt is _CLOSE:
            self._drop(client)
        elif nxt is _LATER:
            self._later.hold(client)
        # PARKED: a queue of its own holds it

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
        except Exception as e:  # noqa: BLE001  # worker and pool threads must live on
            log.error(f"closing fd={client.fd} failed: {e!r}")
        self.on_close()

    def _worker(self) -> None:
        set_thread_name("epoll")
        poll = self.ep.poll
        clients = self.clients
        stop_fd = self._stop_fd
        while True:
            for fd, _ in poll(-1, EVENTS_PER_WAIT):
                if fd == stop_fd:
                    if self._leave():
                        return
                    continue
                client = clients.get(fd)
                if client is not None:
                    self.run(client)

    def _leave(self) -> bool:
        with self._lock:
            if not self._workers.leave():
                return False
            if self._workers.excess == 0:
                try:
                    os.eventfd_read(self._stop_fd)
                except BlockingIOError:
                    pass
            return True

    # -- management ------------------------------------------------------
    def resize(self, n: int) -> None:
        """Start or stop worker threads so that ``n`` remain."""
        self._workers.resize(n)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker thread and wait for them."""
        self._workers.stop(timeout)

    def idle_clients(self) -> list[Client]:
        return [c for c in list(self.clients.values()) if c.idle()]
