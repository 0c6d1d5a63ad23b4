"""How many connections each worker process holds, in memory they all share.

Blocking accept alone does not balance a burst of connections across worker
processes (docs/queues.txt, "Processes"): an acceptor that finds the listen
queue non-empty takes the next connection without queueing behind the other
acceptors, so whichever process has a CPU drains the queue.  With this board
an acceptor that holds more connections than the least loaded worker lets a
turn pass, so the kernel hands the connection to an acceptor of a worker that
holds fewer.
"""
from __future__ import annotations

import mmap
import struct

ABSENT = 2**31 - 1  # a worker not accepting (not started, shutting down, dead)
_SLOT = struct.Struct("i")


class LoadBoard:
    """One slot per worker index, created by the master before it forks."""

    def __init__(self, nworkers: int) -> None:
        self.nworkers = nworkers
        self._mem = mmap.mmap(-1, _SLOT.size * nworkers)  # MAP_SHARED: survives fork as one memory
        self.index = -1  # our slot, in a worker (each process has its own copy of this object)
        for i in range(nworkers):
            self.withdraw(i)

    def publish(self, count: int) -> None:
        _SLOT.pack_into(self._mem, _SLOT.size * self.index, min(count, ABSENT - 1))

    def withdraw(self, index: int) -> None:
        _SLOT.pack_into(self._mem, _SLOT.size * index, ABSENT)

    def least_other(self, unresponsive: dict[int, int]) -> tuple[int, int]:
        """(index, count) of the other accepting worker holding the fewest
        connections; (-1, ABSENT) if none.  ``unresponsive`` maps a worker to
        the count it held when it let a turn pass untaken (stopped, hung): it
        is skipped until that count moves, and forgotten then."""
        best = (-1, ABSENT)
        for i in range(self.nworkers):
            if i == self.index:
                continue
            count = _SLOT.unpack_from(self._mem, _SLOT.size * i)[0]
            if i in unresponsive:
                if unresponsive[i] == count:
                    continue
                del unresponsive[i]
            if count < best[1]:
                best = (i, count)
        return best
