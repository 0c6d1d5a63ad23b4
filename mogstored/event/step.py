"""The step vocabulary shared by the event core, the I/O pools and the clients.

A client is a state machine.  Each of its states says where its step must run:
on any thread (an epoll worker, typically), or in the client's device I/O pool
(``State.on_pool``) because it touches a disk.  The core performs the hop to
the pool; a step only says what the client needs next (:class:`Next`).
"""
from __future__ import annotations

import enum
import socket
from typing import Protocol


class Next(enum.Enum):
    """What a client needs after one step."""

    READ = 1  # input
    WRITE = 2  # room in the socket's send buffer
    ACTIVE = 3  # more work ready now: requeue behind the other ready clients
    CLOSE = 4
    PARKED = 5  # held by a queue (fsck) that requeues it later; or a finished task
    RUN = 6  # the state changed: run the next step now, where that state runs
    LATER = 7  # input trickles in: wait a moment (event/later.py), then for input


class State:
    """A named state of a connection; listed in its class's ``STATES``."""

    __slots__ = ("computes", "name", "on_pool")

    def __init__(self, name: str, on_pool: bool, computes: bool = False) -> None:
        self.name = name
        self.on_pool = on_pool  # the step blocks on a disk: run it in the device pool
        # Its step computes outside the interpreter lock (hashing, copies of whole
        # buffers, long sendfile calls): a pool thread beside it is worth having
        # (store/iopool.py, the grower's rule).
        self.computes = computes

    def __repr__(self) -> str:
        return f"<{self.name}{' (pool)' if self.on_pool else ''}>"


def states(*names: str, on_pool: bool, computes: bool = False) -> tuple[State, ...]:
    """Several states that run in the same place."""
    return tuple(State(name, on_pool, computes) for name in names)


class Pool(Protocol):
    """Where a client is parked to run its next step (a device I/O pool)."""

    def submit(self, client: Client) -> None: ...


class Client(Protocol):
    """What the core and the pools need of a client."""

    sock: socket.socket
    fd: int
    state: State

    @property
    def pool(self) -> Pool:
        """The pool its ``on_pool`` states run in."""
        ...

    def step(self, pool: Pool | None) -> Next:
        """Run one step; ``pool`` is the pool running it (None on an epoll worker)."""
        ...

    def close(self) -> None: ...

    def idle(self) -> bool:
        """True while waiting between requests with nothing buffered."""
        ...


class Parked(Protocol):
    """A client waiting in a queue of its own (fsck) until its turn."""

    def resume(self) -> None: ...
