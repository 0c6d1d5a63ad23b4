"""Descriptor pressure (§3.10): when ``accept4`` or a file ``open`` runs out of
descriptors, HTTP connections silent in both directions for more than 5 s are
shut down, so that waiting clients get served.

There is no idle timeout otherwise: a keep-alive client may stay forever while
descriptors are plentiful.  Idleness is the kernel's view of the TCP connection
(``TCP_INFO``), whatever the HTTP state, so a client stalled mid-head or
mid-body qualifies too.  Sidechannel connections are never expired.

The server builds one :class:`Expiry` over its client table and hands its hooks
to the acceptors and the connections; nothing here knows the event core.
"""
from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from mogstored import log
from mogstored.event.step import Client

T = TypeVar("T")
STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
IDLE_MS = 5000
OPEN_RETRY_PAUSE = 0.05  # expired clients' threads need a moment to close their fds
ACCEPT_RETRY_PAUSE = 0.01  # out of descriptors: an acceptor retries accept4 this soon
_TCP_ESTABLISHED = 1
# struct tcp_info: u8 tcpi_state at 0; u32 last_data_sent, last_ack_sent,
# last_data_recv, last_ack_recv at 44, 48, 52, 56.
_TCP_INFO = struct.Struct("B43xI4xII")


class TcpInfo(NamedTuple):
    state: int
    last_data_sent: int  # ms ago
    last_data_recv: int
    last_ack_recv: int


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The kernel's view of a TCP connection; None if it has none (closed)."""
    try:
        return TcpInfo._make(_TCP_INFO.unpack_from(
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)))
    except OSError:
        return None


def _idle(sock: socket.socket) -> bool:
    info = tcp_info(sock)
    return info is not None and info.state == _TCP_ESTABLISHED and min(info[1:]) > IDLE_MS


def heard_within(sock: socket.socket, ms: int) -> bool:
    """Data arrived less than ``ms`` ago (for a connection that never sent
    any: it was established less than ``ms`` ago), or arrived earlier and
    waits unread (its reader was short of CPU)."""
    info = tcp_info(sock)
    if info is None:
        return False
    if info.last_data_recv < ms:
        return True
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing queued
        return False


class Expiry:
    """Expires idle expirable clients, at most once per wall-clock second."""

    def __init__(self, clients: Callable[[], Iterable[Client]]) -> None:
        self.clients = clients
        self._lock = threading.Lock()
        self._last_second = -1

    def relieve(self, report: Callable[[], None]) -> bool:
        """Expire idle HTTP clients; ``report`` logs the failure that starved us
        first.  False if it was already done this second."""
        now = int(time.time())
        with self._lock:
            if now == self._last_second:
                return False
            self._last_second = now
        report()
        expired = 0
        for client in list(self.clients()):
            if getattr(client, "expirable", False) and _idle(client.sock):
                try:
                    # The client's own thread sees EOF, and closes it: that frees the fd.
                    client.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    continue
                expired += 1
        log.error(f"expired {expired} idle connections (>{IDLE_MS // 1000} sec)")
        return True

    def accept_failed(self, e: OSError) -> None:
        """Acceptor hook: log a failed accept4; if out of descriptors, expire
        idle clients and pause before the retry (the log and the scan happen
        at most once a second)."""
        report = lambda: log.error(f"accept4() failed with: {e.strerror}")
        if e.errno not in STARVED:
            report()
            return
        self.relieve(report)
        time.sleep(ACCEPT_RETRY_PAUSE)

    def retry_open(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a file open), retried once after expiring idle clients if it
        ran out of descriptors; a second failure is the caller's (500)."""
        try:
            return fn()
        except OSError as e:
            if e.errno not in STARVED:
                raise
            message = f"open() failed with: {e.strerror}"
            self.relieve(lambda: log.error(message))
            time.sleep(OPEN_RETRY_PAUSE)
            return fn()
