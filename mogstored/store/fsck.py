"""The fsck digest queue (§4.6): one ``MD5|SHA-1 <path> fsck`` at a time per
filesystem, FIFO, at best-effort I/O priority 7, so a tracker's fsck never
crowds out ordinary reads on the same disks."""
from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mogstored.event.step import Parked
from mogstored.libc import libc, syscall_number

_IOPRIO_SET, _IOPRIO_GET = syscall_number("ioprio_set"), syscall_number("ioprio_get")  # None: left alone
_IOPRIO_WHO_PROCESS = 1  # with a thread id: just that thread
_IOPRIO_CLASS_NONE = 0
_IOPRIO_CLASS_BE = 2
_IOPRIO_CLASS_SHIFT = 13
_LOWEST_BE = (_IOPRIO_CLASS_BE << _IOPRIO_CLASS_SHIFT) | 7



class FsckQueues:
    """Per filesystem (``st_dev``): whether one fsck runs, and who waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, collections.deque[Parked]] = {}

    def enter(self, st_dev: int, client: Parked) -> bool:
        """True: run now.  False: parked; ``client.resume()`` is called when
        the fsck ahead of it on this filesystem is done."""
        with self._lock:
            queue = self._waiting.get(st_dev)
            if queue is None:
                self._waiting[st_dev] = collections.deque()
                return True
            queue.append(client)
            return False

    def leave(self, st_dev: int) -> None:
        """The running fsck on ``st_dev`` finished: start the next one."""
        with self._lock:
            queue = self._waiting[st_dev]
            if not queue:
                del self._waiting[st_dev]
                return
            nxt = queue.popleft()
        nxt.resume()


@contextmanager
def low_io_priority() -> Iterator[None]:
    """Best-effort level 7 for this thread, if it was best-effort or unset."""
    set_nr, get_nr = _IOPRIO_SET, _IOPRIO_GET
    if set_nr is None or get_nr is None:
        yield
        return
    tid = threading.get_native_id()
    old = libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, tid)
    lowered = old >= 0 and (old >> _IOPRIO_CLASS_SHIFT) in (_IOPRIO_CLASS_NONE, _IOPRIO_CLASS_BE)
    if lowered:
        libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, tid, _LOWEST_BE)
    try:
        yield
    finally:
        if lowered:
            libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, tid, old)
