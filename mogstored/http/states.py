"""The states of an HTTP connection and the interfaces between the connection
(connection.py) and its per-request transfers (get.py, put.py, dav.py).

    READING    head bytes in, parse; dispatch               (any thread)
    ANSWERING  send an answer made in memory, then finish   (any thread)
    LOOKING    GET/HEAD from the caches if that cannot block:
               cached lookup, fstat, page-cache read (get.py) (any thread)
    OPENING    GET/HEAD: open, fstat, head  (get.py)        (device pool)
    SENDING    GET body by sendfile         (get.py)        (device pool)
    SENDING_BULK  the same, 4 MiB or more to go: computes   (device pool)
    CREATING   PUT: the temp file           (put.py)        (device pool)
    RECEIVING  PUT body, commit             (put.py)        (device pool)
    RECEIVING_BULK  the same, the body hashed or a whole
               buffer or more to go: computes               (device pool)
    DELETING   DELETE                       (dav.py)        (device pool)
"""
from __future__ import annotations

import os
import socket
from typing import Protocol

from mogstored.event.step import Next, Pool, State, states
from mogstored.http.head import Request
from mogstored.node.service import ServiceContext
from mogstored.store.iopool import IoPool

READING, ANSWERING, LOOKING = states("reading", "answering", "looking", on_pool=False)
OPENING, SENDING, CREATING, RECEIVING, DELETING = states(
    "opening", "sending", "creating", "receiving", "deleting", on_pool=True)
SENDING_BULK, RECEIVING_BULK = states("sending-bulk", "receiving-bulk", on_pool=True, computes=True)
STATES = (READING, ANSWERING, LOOKING, OPENING, SENDING, SENDING_BULK, CREATING, RECEIVING, RECEIVING_BULK,
          DELETING)


class Transfer(Protocol):
    """The per-request part of a connection in a transfer state."""

    def step(self, pool: Pool | None) -> Next: ...

    def release(self) -> None:
        """Close what it holds open (the connection finished or is closing)."""
        ...


class _NoTransfer:
    """Between requests."""

    def step(self, pool: Pool | None) -> Next:
        raise AssertionError("no transfer")

    def release(self) -> None:
        pass


NO_TRANSFER: Transfer = _NoTransfer()
NO_REQUEST = Request("", "", False)  # between requests


class FileTransfer:
    """A transfer of one request on one file below a device."""

    __slots__ = ("conn", "file", "rel", "req")

    def __init__(self, conn: Connection, req: Request, rel: str) -> None:
        self.conn = conn
        self.req = req
        self.rel = rel
        self.file = -1

    def release(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1


class Connection(Protocol):
    """What a transfer uses of its connection."""

    sock: socket.socket
    fd: int
    svc: ServiceContext
    inbuf: bytearray
    pos: int
    out: memoryview
    state: State
    peer: str
    pool: IoPool  # the request's device pool

    def fail(self, status: int) -> Next:
        """Answer an error and close (§3.8.2)."""
        ...

    def answer(self, head: bytes | bytearray) -> Next:
        """Send a whole answer, then finish."""
        ...

    def flush(self, more: bool = False) -> bool:
        """Send ``out``; False while the socket is full."""
        ...

    def finish(self) -> Next:
        """The response is out."""
        ...
