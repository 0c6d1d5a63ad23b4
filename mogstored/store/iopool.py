"""Per-device I/O thread pools: blocking file-system work off the event core.

A client whose next state touches a disk (``State.on_pool``) is parked by the
event core in the pool of that device.  A pool thread runs the step through
the core's ``run``; the result goes back to the event queue with EPOLL_CTL_MOD.  A slow or failing
disk therefore only ever ties up its own pool's threads: clients of other
devices keep their threads, and no epoll worker ever waits for a disk.
"""
from __future__ import annotations

import collections
import errno
import os
import threading
import time
import weakref
from collections.abc import Callable

from mogstored import counters, log
from mogstored.event.step import Client
from mogstored.event.threads import set_thread_name, stop_all
from mogstored.store.devices import device_of_path

BUFFER_SIZE = 1 << 20
DEFAULT_THREADS = 10  # per device, like Perlbal's per-device AIO channels
SHARED_THREADS = 4  # paths outside any device (/, /foo, sidechannel misc)
MAX_THREADS = 100
IDLE_EXIT = 10.0  # seconds a pool thread waits for work before it exits
GROW_CHECK = 0.005  # seconds between the grower's looks while jobs wait behind busy threads
# A busy thread is worth company once its step has run LONG_STEP and, looked at
# by the grower (which holds the interpreter lock), it sleeps in the kernel for the
# disk (state D), or it runs (R, not in futex()) in a step that said it computes
# outside the lock (computing(): digests, copies of whole 1 MiB buffers, long
# sendfile calls).  Other running steps (page-cache reads
# and writes between short system calls) are not: more threads for them only add
# lock hand-offs.  Any step running STUCK_AFTER counts, whatever its state.
LONG_STEP = 0.001
STUCK_AFTER = 0.5

Run = Callable[[Client, "IoPool"], None]  # the event core's EventQueue.run

_local = threading.local()


def computing() -> None:
    """The running pool step computes outside the interpreter lock (hashing): a
    second thread would run beside it, so the grower may add one."""
    clock = getattr(_local, "clock", None)
    if clock is not None:  # on a pool thread
        clock.computes = True


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
    """A FIFO of parked clients and the threads that run their steps.

    Threads start lazily: while no thread runs a job (or all running ones
    compute or are stuck), a submit wakes an idle one or starts the first.  Beyond that a job waits its turn, and the grower
    (:class:`_Grower`) wakes idle threads, then starts more up to ``limit``,
    only while every running thread of the pool is in a long step that waits
    for the disk or computes outside the interpreter lock (threads grown for
    a slow disk or for digests are not woken for page-cache work later).  A
    thread idle for IDLE_EXIT seconds exits.  So page-cache work keeps one thread, which does not queue for the
    interpreter lock behind others, while a slow or hung disk still gets up to
    ``limit`` requests in flight.  The most recently idle thread is woken first
    (its stack is warm).  ``server aio_threads`` (:meth:`resize`) brings a pool
    that has threads to exactly ``limit`` at once, so the command shows.
    """

    def __init__(self, name: str, run: Run, nthreads: int) -> None:
        self.name = name
        self.run = run
        self.limit = nthreads  # server aio_threads: the most threads it may run
        self._jobs: collections.deque[Client | Task] = collections.deque()
        self.stats = counters.PoolStats("none" if name == "shared" else name)  # metrics
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._idle: list[threading.Lock] = []  # one held lock per waiting thread, released to wake it
        self._busy = 0  # threads running a job

    def disk_error(self, e: OSError, what: str) -> None:
        """``what`` failed with ``e``: counted and logged once if the disk failed, not the
        request (a missing file, a symlink: ENOENT, ELOOP, ... are neither)."""
        if self.stats.io_error(e.errno):
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            log.error(f"{self.stats.device}: {what} failed: {e.strerror} ({name})")

    def submit(self, client: Client | Task) -> None:
        with self._lock:
            self._jobs.append(client)
            if self._idle and (not self._busy or self._running_ones_want_company()):
                self._idle.pop().release()
            elif not self._threads:
                self._start_thread()
            elif self._idle or len(self._threads) < self.limit:
                # A running (or starting) thread takes it next, unless the grower finds
                # them waiting for the disk: idle threads are woken first, then more started.
                _grower.watch(self)

    def _running_ones_want_company(self) -> bool:
        """Every running thread computes outside the interpreter lock (digests) or is
        stuck (a long sweep, a hung disk): an idle thread is worth waking at once,
        without waiting for the grower's look.  Holding ``_lock``."""
        stuck = counters.now() - STUCK_AFTER
        return all(c.computes or c.since <= stuck for c in self.stats.clocks if c.since)

    def grow(self) -> bool:
        """Wake an idle thread, or start one up to ``limit``, per queued job if every
        running thread is in a long step outside the interpreter lock
        (:func:`_needs_company`); True while jobs still wait behind busy threads
        (look again).

        Under the interpreter lock, threads that run Python only take turns, and each
        extra one costs lock hand-offs; threads help while others wait for a disk
        or compute without the lock."""
        with self._lock:
            if not self._jobs or (len(self._threads) >= self.limit and not self._idle):
                return False
            clocks = list(self.stats.clocks)
            if len(clocks) < len(self._threads):
                return True  # one is starting: it takes a job
        now = counters.now()
        busy = [c for c in clocks if c.since]
        if busy and all(_needs_company(c, now) for c in busy):
            with self._lock:
                for _ in range(len(self._jobs)):
                    if self._idle:
                        self._idle.pop().release()
                    elif len(self._threads) < self.limit:
                        self._start_thread()
        return True

    def call(self, fn: Callable[[], None]) -> None:
        self.submit(Task(fn))

    def threads(self) -> int:
        """Threads running now (at most ``limit``)."""
        return len(self._threads)

    @property
    def waiting(self) -> int:
        """Jobs queued for a thread (metrics)."""
        return len(self._jobs)

    def resize(self, n: int, show: bool = False) -> None:
        """At most ``n`` threads from now on: surplus ones exit when idle, or at
        once if they are.  A pool that has threads (any with queued jobs does),
        or ``show``, gets exactly ``n`` at once, so ``server aio_threads`` shows
        in /proc/PID/task; the new ones wait for work and exit after IDLE_EXIT
        without any, as every thread.  A pool without threads (an idle device)
        stays without."""
        with self._lock:
            self.limit = n
            self._wake_all()
            if self._threads or show:
                for _ in range(n - len(self._threads)):
                    self._start_thread()

    def _start_thread(self) -> None:
        """Holding ``_lock``."""
        t = threading.Thread(target=self._loop, name=f"io:{self.name}", daemon=True)
        self._threads.add(t)
        t.start()

    def _wake_all(self) -> None:
        while self._idle:
            self._idle.pop().release()

    def stop(self, timeout: float = 5.0) -> None:
        stop_all(self._lock, self._threads, self.resize, timeout)

    def _loop(self) -> None:
        clock = _local.clock = self.stats.thread_clock()  # metrics: when this thread's current job began
        try:
            self._work(clock)
        finally:
            self.stats.drop_clock(clock)

    def _work(self, clock: counters.CallClock) -> None:
        jobs = self._jobs
        lock = self._lock
        me = threading.current_thread()
        wake = threading.Lock()
        run = self.run
        set_thread_name(f"io:{self.name}")
        job: Client | Task | None = None
        while True:
            with lock:
                if job is not None:
                    self._busy -= 1
                if len(self._threads) > self.limit:
                    self._threads.discard(me)
                    return
                if jobs:
                    job = jobs.popleft()
                    self._busy += 1
                else:
                    wake.acquire()
                    self._idle.append(wake)
                    job = None
            if job is None:
                if wake.acquire(timeout=IDLE_EXIT):
                    wake.release()
                    continue  # woken: a job, or a resize
                with lock:
                    if wake in self._idle:  # nobody woke us: leave
                        self._idle.remove(wake)
                        wake.release()
                        self._threads.discard(me)
                        return
                # woken just as the wait timed out: take the wake-up
                wake.acquire()
                wake.release()
                continue
            clock.since = counters.now()
            if type(job) is Task:
                job.run()
            else:
                run(job, self)  # type: ignore[arg-type]
            clock.since = 0.0
            clock.computes = False


def _needs_company(clock: counters.CallClock, now: float) -> bool:
    took = now - clock.since
    if took >= STUCK_AFTER:
        return True
    if took < LONG_STEP:
        return False
    state = _task_file(clock.tid, "stat")
    state = state[state.rindex(b")") + 2 :][:1] if state else b""
    if state == b"D":
        return True
    # A thread just woken to take the interpreter lock is R too, but still in futex().
    return state == b"R" and clock.computes and _task_file(clock.tid, "syscall").split(b" ", 1)[0] != _FUTEX


# The futex syscall's number as /proc/TID/syscall shows it: a thread in it waits for
# a lock (the interpreter's, most likely), not for a disk.
_FUTEX = {"x86_64": b"202", "aarch64": b"98", "riscv64": b"98"}.get(os.uname().machine, b"")


def _task_file(tid: int, name: str) -> bytes:
    """/proc/self/task/TID/NAME of a thread of this process (b"" if it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


class _Grower:
    """One thread per process that gives pools more threads while every thread of
    theirs is in a long step outside the interpreter lock (IoPool.grow) and jobs wait behind them; asleep
    when no job waits."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[IoPool] = weakref.WeakSet()  # pools that queued behind busy threads
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """A child has no grower thread, and fresh locks: a fork may have copied
        them held by a thread the child lacks."""
        self._running = False
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def watch(self, pool: IoPool) -> None:
        """``pool`` queued a job behind busy threads (it holds its own lock)."""
        with self._lock:
            self._pools.add(pool)
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="io:grow", daemon=True).start()
        self._wake.set()

    def _loop(self) -> None:
        set_thread_name("io:grow")
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                time.sleep(GROW_CHECK)
                with self._lock:
                    pools = list(self._pools)
                waiting = [pool for pool in pools if pool.grow()]  # every pool looked at
                if not waiting:
                    break


_grower = _Grower()


class IoQueues:
    """The pools of one process: one per known device plus a shared one."""

    def __init__(self, run: Run, per_device: int = DEFAULT_THREADS) -> None:
        self.run = run
        self.per_device = per_device
        self.shared = IoPool("shared", run, SHARED_THREADS)
        self._pools: dict[tuple[str, int], IoPool] = {}
        self._by_name: dict[tuple[str, str], IoPool] = {}  # (docroot, "dev3") -> its pool, as found
        self._lock = threading.Lock()

    def for_path(self, docroot: str, path: str) -> IoPool:
        """The pool for a request path like ``/dev3/0/000/000/0000000001.fid``."""
        name = path.lstrip("/").partition("/")[0]
        pool = self._by_name.get((docroot, name))  # a per-request call: no regex on a hit
        if pool is not None:
            return pool
        devid = device_of_path(path)
        if devid is not None:
            pool = self._pools.get((docroot, devid))
            if pool is not None:
                self._by_name[docroot, name] = pool  # pools are never removed
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
        """``server aio_threads = N``: the limit of every pool, the shared one too.
        Pools with threads get N at once; so does the shared pool, the node's own
        even before any device exists, so the command always shows in the thread
        count (cmogstored's test_aio_threads, on a docroot without devices)."""
        with self._lock:
            self.per_device = per_device
            for pool in self._pools.values():
                pool.resize(per_device)
            self.shared.resize(per_device, show=True)

    def pools(self) -> list[IoPool]:
        """Every pool, the shared one last."""
        with self._lock:
            return [*self._pools.values(), self.shared]

    def stop(self) -> None:
        for pool in self.pools():
            pool.stop()
