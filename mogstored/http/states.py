"""The states of an HTTP connection, and what a per-request transfer (get.py,
put.py, dav.py) returns to its connection (connection.py): an outcome, never a
write to the connection or a call back into it.

    state           runs on       step (connection.py _STEPS)
    READING         any thread    read and parse a head; dispatch
    ANSWERING       any thread    send an answer made in memory, then finish
    LOOKING         any thread    GetTransfer.look: GET/HEAD from the caches if
                                  that cannot block (cached lookup, fstat,
                                  page-cache read)
    OPENING         device pool   GetTransfer.open: open, fstat, the head
    SENDING         device pool   send the head, then the file range by sendfile
    SENDING_BULK    device pool   the same, 4 MiB or more to go: computes
    CREATING        device pool   PutTransfer.create: the temp file
    RECEIVING       device pool   recv the body into PutTransfer.consume, then
                                  PutTransfer.commit
    RECEIVING_BULK  device pool   the same, the body hashed or a whole buffer
                                  or more to go: computes
    DELETING        device pool   DeleteTransfer.delete

A step that enters a state running where it runs itself (any thread, or this
request's pool from a pool state) runs that state's step at once; one that
enters a pool state from any thread returns RUN and the core hops.
"""
from __future__ import annotations

import os
from typing import Protocol

from mogstored.event.step import states
from mogstored.http.head import Request
from mogstored.node.service import ServiceContext
from mogstored.store.iopool import IoPool

READING, ANSWERING, LOOKING = states("reading", "answering", "looking", on_pool=False)
OPENING, SENDING, CREATING, RECEIVING, DELETING = states(
    "opening", "sending", "creating", "receiving", "deleting", on_pool=True)
SENDING_BULK, RECEIVING_BULK = states("sending-bulk", "receiving-bulk", on_pool=True, computes=True)
STATES = (READING, ANSWERING, LOOKING, OPENING, SENDING, SENDING_BULK, CREATING, RECEIVING, RECEIVING_BULK,
          DELETING)


class Outcome:
    """What a transfer step asks of its connection, besides an answer (the head
    as bytes) or a failure (the status as an int: answer it and close)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


SEND = Outcome("send")  # send the transfer's head, then its file range (GetTransfer)
OPEN = Outcome("open")  # not in the caches: open it in the device pool (OPENING)
BODY = Outcome("body")  # the file is ready: receive the body (RECEIVING)
Result = bytes | bytearray | int | Outcome


class Transfer(Protocol):
    """The per-request part of a connection in a transfer state."""

    def release(self) -> None:
        """Close what it holds open (the connection finished or is closing)."""
        ...


class _NoTransfer:
    """Between requests."""

    def release(self) -> None:
        pass


NO_TRANSFER: Transfer = _NoTransfer()
NO_REQUEST = Request("", "", False)  # between requests


class FileTransfer:
    """A transfer of one request on one file below a device: what it may use is
    its service and the request's device pool (for its counters)."""

    __slots__ = ("file", "pool", "rel", "req", "svc")

    def __init__(self, svc: ServiceContext, pool: IoPool, req: Request, rel: str) -> None:
        self.svc = svc
        self.pool = pool
        self.req = req
        self.rel = rel
        self.file = -1

    def release(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1
