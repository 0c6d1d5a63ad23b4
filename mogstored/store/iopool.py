"""Per-device I/O thread pools: blocking file-system work off the event core.

A client whose next state touches a disk (``State.on_pool``) is parked by the
event core in the pool of that device.  A pool thread runs the step through
the core's ``run``; the result goes back to the event queue with EPOLL_CTL_MOD.  A slow or failing
disk therefore only ever ties up its own pool's threads: clients of other
devices keep their threads, and no epoll worker ever waits for a disk.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from mogstored import counters, log
from mogstored.event.step import Client
from mogstored.event.threads import ThreadSet
from mogstored.store.devices import device_of_path

BUFFER_SIZE = 1 << 20
DEFAULT_THREADS = 10  # per device, like Perlbal's per-device AIO channels
SHARED_THREADS = 4  # paths outside any device (/, /foo, sidechannel misc)
MAX_THREADS = 100

Run = Callable[[Client, "IoPool"], None]  # the event core's EventQueue.run

_local = threading.local()


def thread_buffer() -> memoryview:
    """This pool thread's 1 MiB buffer, reused for every PUT body and digest it
    runs (a step never keeps it past its return)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(BUFFER_SIZE))
    return buf


class Task:
    """Plain work for a pool (a usage-file pass): not a client, nothing to requeue."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def run(self) -> None:
        try:
            self.fn()
        except Exception as e:  # noqa: BLE001  # not a connection: nothing to close, the thread lives on
            log.error(f"task {self.fn!r} failed: {e!r}")


class IoPool:
    """A FIFO of parked clients and the threads that run their steps."""

    def __init__(self, name: str, run: Run, nthreads: int) -> None:
        self.name = name
        self.run = run
        self._jobs: collections.deque[Client | Task] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self.stats = counters.PoolStats("none" if name == "shared" else name)  # metrics
        self._threads = ThreadSet(f"io:{name}", self._loop, self._cond, self._cond.notify)
        self._threads.resize(nthreads)

    def submit(self, client: Client | Task) -> None:
        with self._cond:
            self._jobs.append(client)
            self._cond.notify()

    def call(self, fn: Callable[[], None]) -> None:
        self.submit(Task(fn))

    @property
    def nthreads(self) -> int:
        """Threads it has now (metrics)."""
        return len(self._threads.threads) - self._threads.excess

    @property
    def waiting(self) -> int:
        """Jobs queued for a thread (metrics)."""
        return len(self._jobs)

    def resize(self, n: int) -> None:
        self._threads.resize(n)

    def stop(self, timeout: float = 5.0) -> None:
        self._threads.stop(timeout)

    def _loop(self) -> None:
        jobs = self._jobs
        cond = self._cond
        threads = self._threads
        run = self.run
        clock = self.stats.thread_clock()  # metrics: when this thread's step began
        while True:
            with cond:
                while not jobs and threads.excess == 0:
                    cond.wait()
                if not jobs and threads.leave():
                    self.stats.drop_clock(clock)
                    return
                job = jobs.popleft()
            clock.since = counters.now()
            if type(job) is Task:
                job.run()
            else:
                run(job, self)  # type: ignore[arg-type]
            clock.since = 0.0


class IoQueues:
    """The pools of one process: one per known device plus a shared one."""

    def __init__(self, run: Run, per_device: int = DEFAULT_THREADS) -> None:
        self.run = run
        self.per_device = per_device
        self.shared = IoPool("shared", run, SHARED_THREADS)
        self._pools: dict[tuple[str, int], IoPool] = {}
        self._lock = threading.Lock()

    def for_path(self, docroot: str, path: str) -> IoPool:
        """The pool for a request path like ``/dev3/0/000/000/0000000001.fid``."""
        devid = device_of_path(path)
        if devid is not None:
            pool = self._pools.get((docroot, devid))
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
                    self._pools[key] = IoPool(f"dev{devid}", self.run, self.per_device)

    def resize(self, per_device: int) -> None:
        """``server aio_threads = N``: every pool gets N threads, the shared one too (so
        the setting shows even before any device exists)."""
        with self._lock:
            self.per_device = per_device
            for pool in (*self._pools.values(), self.shared):
                pool.resize(per_device)

    def pools(self) -> list[IoPool]:
        """Every pool, the shared one last."""
        with self._lock:
            return [*self._pools.values(), self.shared]

    def stop(self) -> None:
        for pool in self.pools():
            pool.stop()
