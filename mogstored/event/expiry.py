"""Descriptor pressure (§3.10): when ``accept4`` or a file ``open`` runs out of
descriptors, HTTP connections silent in both directions for more than 5 s are
shut down, so that waiting clients get served.

There is no idle timeout otherwise: a keep-alive client may stay forever while
descriptors are plentiful.  Idleness is the kernel's view of the TCP connection
(``TCP_INFO``), whatever the HTTP state, so a client stalled mid-head or
mid-body qualifies too.  Sidechannel connections are never expired.
"""
from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from mogstored import log

if TYPE_CHECKING:
    from mogstored.event.core import EventQueue

T = TypeVar("T")
STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
IDLE_MS = 5000
_TCP_ESTABLISHED = 1
# struct tcp_info: u8 tcpi_state at 0; u32 last_data_sent, last_ack_sent,
# last_data_recv, last_ack_recv at 44, 48, 52, 56.
_TCP_INFO = struct.Struct("B43xI4xII")

_lock = threading.Lock()
_last_second = -1


def _tcp_info(sock: socket.socket) -> tuple[int, int, int, int] | None:
    """(state, ms since data sent, since data received, since an ACK received)."""
    try:
        return _TCP_INFO.unpack_from(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size))
    except OSError:
        return None


def _idle(sock: socket.socket) -> bool:
    info = _tcp_info(sock)
    return info is not None and info[0] == _TCP_ESTABLISHED and min(info[1:]) > IDLE_MS


def heard_within(sock: socket.socket, ms: int) -> bool:
    """Data arrived less than ``ms`` ago; for a connection that never sent
    any, it was established less than ``ms`` ago."""
    info = _tcp_info(sock)
    return info is not None and info[2] < ms


def relieve(queue: "EventQueue", report: Callable[[], None]) -> bool:
    """Expire idle HTTP clients, at most once per wall-clock second (per
    process); ``report`` logs the failure that starved us first.  False if
    it was already done this second."""
    global _last_second
    now = int(time.time())
    with _lock:
        if now == _last_second:
            return False
        _last_second = now
    report()
    expired = 0
    for client in list(queue.clients.values()):
        if getattr(client, "expirable", False) and _idle(client.sock):
            try:
                # The client's own thread sees EOF, and closes it: that frees the fd.
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
            expired += 1
    log.error(f"expired {expired} idle connections (>{IDLE_MS // 1000} sec)")
    return True


OPEN_RETRY_PAUSE = 0.05  # expired clients' threads need a moment to close their fds


def retry_starved(queue: "EventQueue", fn: Callable[[], T]) -> T:
    """``fn()`` (a file open), retried once after expiring idle clients if it
    ran out of descriptors; a second failure is the caller's (500)."""
    try:
        return fn()
    except OSError as e:
        if e.errno not in STARVED:
            raise
        message = f"open() failed with: {e.strerror}"
        relieve(queue, lambda: log.error(message))
        time.sleep(OPEN_RETRY_PAUSE)
        return fn()
