"""Per-device I/O thread pools: blocking file-system work off the event core.

A client whose next step touches a disk is parked in the pool of that device
(its step returned the pool).  A pool thread runs the step; the result goes back
to the event queue with EPOLL_CTL_MOD, or to another pool.  A slow or failing
disk therefore only ever ties up its own pool's threads: clients of other
devices keep their threads, and no epoll worker ever waits for a disk.
"""
from __future__ import annotations

import collections
import re
import threading
from typing import TYPE_CHECKING, Callable

from . import log
from .core import Next

if TYPE_CHECKING:
    from .core import Client, EventQueue

BUFFER_SIZE = 1 << 20
DEFAULT_THREADS = 10  # per device, like Perlbal's per-device AIO channels
SHARED_THREADS = 4  # paths outside any device (/, /foo, sidechannel misc)
MAX_THREADS = 100


_local = threading.local()


def thread_buffer() -> memoryview:
    """This pool thread's 1 MiB buffer, reused for every PUT body and digest it
    runs (a step never keeps it past its return)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(BUFFER_SIZE))
    return buf


class Task:
    """Plain work for a pool (a usage-file pass), run like a client's step."""

    fd = -1

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def step(self, pool: "IoPool | None") -> Next:
        try:
            self.fn()
        except Exception as e:  # not a connection: nothing to close, the thread lives on
            log.error(f"task {self.fn!r} failed: {e!r}")
        return Next.PARKED


class IoPool:
    """A FIFO of parked clients and the threads that run their steps."""

    def __init__(self, name: str, queue: "EventQueue", nthreads: int) -> None:
        self.name = name
        self.queue = queue
        self._jobs: collections.deque[Client | Task] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: set[threading.Thread] = set()
        self._excess = 0
        self.resize(nthreads)

    def submit(self, client: "Client | Task") -> None:
        with self._cond:
            self._jobs.append(client)
            self._cond.notify()

    def call(self, fn: Callable[[], None]) -> None:
        self.submit(Task(fn))

    @property
    def nthreads(self) -> int:
        with self._cond:
            return len(self._threads) - self._excess

    def resize(self, n: int) -> None:
        with self._cond:
            have = len(self._threads) - self._excess
            if n > have:
                take_back = min(self._excess, n - have)
                self._excess -= take_back
                for _ in range(n - have - take_back):
                    t = threading.Thread(target=self._loop, name=f"io:{self.name}", daemon=True)
                    self._threads.add(t)
                    t.start()
            elif n < have:
                self._excess += have - n
                self._cond.notify(have - n)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            threads = list(self._threads)
        self.resize(0)
        for t in threads:
            t.join(timeout)

    def _loop(self) -> None:
        me = threading.current_thread()
        jobs = self._jobs
        cond = self._cond
        run = self.queue.run
        while True:
            with cond:
                while not jobs and self._excess == 0:
                    cond.wait()
                if self._excess > 0 and not jobs:
                    self._excess -= 1
                    self._threads.discard(me)
                    return
                client = jobs.popleft()
            run(client, self)


_DEV_RE = re.compile(r"/+dev(\d+)(?:/|$)")  # sidechannel paths may start with //


class IoQueues:
    """The pools of one process: one per known device plus a shared one."""

    def __init__(self, queue: "EventQueue", per_device: int = DEFAULT_THREADS) -> None:
        self.queue = queue
        self.per_device = per_device
        self.shared = IoPool("shared", queue, SHARED_THREADS)
        self._pools: dict[tuple[str, int], IoPool] = {}
        self._lock = threading.Lock()

    def for_path(self, docroot: str, path: str) -> IoPool:
        """The pool for a request path like ``/dev3/0/000/000/0000000001.fid``."""
        m = _DEV_RE.match(path)
        if m is not None:
            pool = self._pools.get((docroot, int(m.group(1))))
            if pool is not None:
                return pool
        return self.shared

    def set_devices(self, docroot: str, devids: set[int]) -> None:
        """Create pools for newly found devices; keep pools of vanished ones
        (a disk may come back, and parked clients may still reference them)."""
        with self._lock:
            for devid in devids:
                key = (docroot, devid)
                if key not in self._pools:
                    self._pools[key] = IoPool(f"dev{devid}", self.queue, self.per_device)

    def resize(self, per_device: int) -> None:
        """``server aio_threads = N``: every pool gets N threads, the shared one too (so
        the setting shows even before any device exists)."""
        with self._lock:
            self.per_device = per_device
            for pool in (*self._pools.values(), self.shared):
                pool.resize(per_device)

    def stop(self) -> None:
        with self._lock:
            pools = [*self._pools.values(), self.shared]
        for pool in pools:
            pool.stop()
