"""Metrics snapshots shared between worker processes (docs/queues.txt, "Metrics board").

Each worker writes a snapshot of its cumulative counters and its gauges into
its slot once a second and at exit; the master writes its own slot (worker
count, restarts).  A respawned worker starts from its slot's last snapshot, so
node totals never go backwards; whichever process answers a scrape sums every
slot.
"""
from __future__ import annotations

import marshal
import mmap
import struct
import threading
import time

from mogstored import log

_HEAD = struct.Struct("=QI")  # sequence number (odd while writing), blob length
_SEQ = struct.Struct("=Q")
SLOT_SIZE = 1 << 18  # anonymous memory: untouched pages cost nothing
READ_PATIENCE = 0.5  # seconds a reader waits out a write (longer: the writer died mid-write)
Snapshot = dict  # {"c": counters, "g": gauges}, each {key tuple: number}


class MetricsBoard:
    """One slot per worker index plus one for the master, mapped before fork.

    Each slot holds one marshalled snapshot behind a sequence number, so a
    reader never takes a half-written one (it retries)."""

    def __init__(self, nworkers: int) -> None:
        self.master = nworkers  # the master's slot
        self.nslots = nworkers + 1
        self.index = -1  # our slot, in a worker (each process has its own copy of this object)
        self._mem = mmap.mmap(-1, SLOT_SIZE * self.nslots)  # MAP_SHARED
        self._lock = threading.Lock()  # writers of one process
        self._too_big = False

    def write(self, index: int, snap: Snapshot) -> None:
        blob = marshal.dumps(snap)
        if len(blob) > SLOT_SIZE - _HEAD.size:
            if not self._too_big:
                self._too_big = True
                log.error(f"metrics snapshot of {len(blob)} bytes does not fit its slot; not shared")
            return
        off = index * SLOT_SIZE
        with self._lock:
            seq = _SEQ.unpack_from(self._mem, off)[0] | 1
            _HEAD.pack_into(self._mem, off, seq, len(blob))
            self._mem[off + _HEAD.size: off + _HEAD.size + len(blob)] = blob
            _SEQ.pack_into(self._mem, off, seq + 1)

    def read(self, index: int) -> Snapshot | None:
        off = index * SLOT_SIZE
        deadline = time.monotonic() + READ_PATIENCE
        while time.monotonic() < deadline:
            seq, n = _HEAD.unpack_from(self._mem, off)
            if seq & 1:  # being written; its writer may be waiting for its interpreter lock
                time.sleep(0.0005)
                continue
            blob = self._mem[off + _HEAD.size: off + _HEAD.size + n]
            if _SEQ.unpack_from(self._mem, off)[0] == seq:
                return marshal.loads(blob) if n else None
        return None

    def counters(self, index: int) -> dict:
        snap = self.read(index)
        return snap["c"] if snap is not None else {}

    def retire(self, index: int) -> None:
        """A worker is gone (master): its counters stay, its gauges go."""
        snap = self.read(index)
        if snap is not None:
            self.write(index, {"c": snap["c"], "g": {}})

    def set_master(self, workers: int, restarts: int, carried: dict | None = None) -> None:
        """The master's slot; ``carried``: the counters of workers replaced by a reload."""
        self.write(self.master, {"c": {**(carried or {}), ("restarts",): restarts}, "g": {("workers",): workers}})
