"""Per-device I/O thread pools: blocking file-system work off the event core.

A client whose next state touches a disk (``State.on_pool``) is parked by the
event core in the pool of that device.  A pool thread runs the step through
the core's ``run``; the result goes back to the event queue with EPOLL_CTL_MOD.  A slow or failing
disk therefore only ever ties up its own pool's threads: clients of other
devices keep their threads, and no epoll worker ever waits for a disk.

How many threads a pool runs (the grower's rule; described here only).  Under
the interpreter lock, threads that run Python only take turns, and each extra
one costs lock hand-offs; more threads help only while the ones there wait
for a disk or compute without the lock.  So:

* a pool starts its first thread with its first job; a submit wakes an idle
  thread (or starts the first) only while no thread runs a job or has been
  woken for one (a burst of submits wakes one thread), or the job's state
  computes (a burst of digests runs side by side at once), or every running
  one computes or is stuck (below);
* otherwise a job waits its turn, and the grower (one thread per process,
  asleep while no job waits) looks every GROW_CHECK seconds: while every
  running thread of the pool is in a step worth company, it wakes idle threads
  first (the most recently idle: its stack is warm), then starts more, one per
  waiting job, up to the pool's ``limit`` (``server aio_threads``);
* a step is worth company once it has run LONG_STEP and its thread, looked at
  in /proc, sleeps in the kernel for the disk (state D), or runs (R, not in
  futex(): that is waiting for the interpreter lock) in a state that declares
  it computes (``State.computes``: digests, PUT bodies hashed or of a whole
  buffer or more, sendfile of 4 MiB or more); and any step running
  STUCK_AFTER, whatever its state (a long sweep, a hung disk).  Other running
  steps (page-cache reads and writes between short system calls) are not:
  more threads for them only add lock hand-offs;
* a thread idle for IDLE_EXIT seconds exits;
* ``server aio_threads`` (:meth:`IoPool.resize`) brings a pool that has
  threads to exactly ``limit`` at once, so the command shows.

So page-cache work keeps one thread, which does not queue for the interpreter
lock behind others, while a slow or hung disk still gets up to ``limit``
requests in flight, and digests of several files run side by side.  Threads
grown for a slow disk or for digests are not woken for page-cache work later.
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
from mogstored.event.step import Client, State
from mogstored.event.threads import set_thread_name, stop_all
from mogstored.libc import syscall_number
from mogstored.store.devices import device_of_path

BUFFER_SIZE = 1 << 20
DEFAULT_THREADS = 10  # per device, like Perlbal's per-device AIO channels
SHARED_THREADS = 4  # paths outside any device (/, /foo, sidechannel misc)
MAX_THREADS = 100
IDLE_EXIT = 10.0  # seconds a pool thread waits for work before it exits
GROW_CHECK = 0.005  # seconds between the grower's looks while jobs wait behind busy threads
LONG_STEP = 0.001  # a step this old may be worth company (the grower's rule above)
STUCK_AFTER = 0.5  # a step this old is, whatever its state

Run = Callable[[Client, "IoPool"], None]  # the event core's EventQueue.run

_local = threading.local()


def thread_buffer() -> memoryview:
    """This pool thread's 1 MiB buffer, reused for every PUT body and digest it
    runs (a step never keeps it past its return)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(BUFFER_SIZE))
    return buf


TASK = State("task", on_pool=True)


class Task:
    """Plain work for a pool (a usage-file pass, a sweep): not a client, nothing
    to requeue.  Its state says whether it computes, as a client's does."""

    __slots__ = ("fn", "state")

    def __init__(self, fn: Callable[[], None], state: State = TASK) -> None:
        self.fn = fn
        self.state = state

    def run(self) -> None:
        try:
            self.fn()
        except Exception as e:  # noqa: BLE001  # not a connection: nothing to close, the thread lives on
            log.error(f"task {self.fn!r} failed: {e!r}")


class _Thread(counters.CallClock):
    """A pool thread as the grower sees it: when its step began (metrics read
    that too), its kernel id (its /proc/self/task entry), and the job it runs,
    whose state says whether the step computes."""

    __slots__ = ("job", "tid")

    def __init__(self) -> None:
        super().__init__()
        self.tid = threading.get_native_id()
        self.job: Client | Task | None = None


class IoPool:
    """A FIFO of parked clients and the threads that run their steps, as many
    as the grower's rule (module docstring) gives it."""

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
        self._woken = 0  # idle threads woken for a job that have not taken the lock again yet

    def disk_error(self, e: OSError, what: str) -> None:
        """``what`` failed with ``e``: counted and logged once if the disk failed, not the
        request (a missing file, a symlink: ENOENT, ELOOP, ... are neither)."""
        if self.stats.io_error(e.errno):
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            log.error(f"{self.stats.device}: {what} failed: {e.strerror} ({name})")

    def submit(self, client: Client | Task) -> None:
        with self._lock:
            self._jobs.append(client)
            if self._idle and (not (self._busy or self._woken) or client.state.computes
                               or (self._busy and self._running_ones_want_company())):
                self._wake_one()
            elif not self._threads:
                self._start_thread()
            elif self._idle or len(self._threads) < self.limit:
                # A running (or starting) thread takes it next, unless the grower finds
                # them waiting for the disk: idle threads are woken first, then more started.
                _grower.watch(self)

    def _running_ones_want_company(self) -> bool:
        """Every running thread is in a computing state or stuck: an idle thread is
        worth waking at once, without waiting for the grower's look.  Holding ``_lock``."""
        stuck = counters.now() - STUCK_AFTER
        clocks: list[_Thread] = self.stats.clocks  # type: ignore[assignment]  # only _Thread clocks are added
        # ``since`` is read once: its thread sets it to 0 outside the lock as a step ends.
        return all(_computes(c) or since <= stuck for c in clocks if (since := c.since))

    def grow(self) -> bool:
        """Per queued job, wake an idle thread or start one up to ``limit``, if every
        running thread is in a step worth company (the grower's rule); True while
        jobs still wait behind busy threads (look again)."""
        with self._lock:
            if not self._jobs or (len(self._threads) >= self.limit and not self._idle):
                return False
            clocks: list[_Thread] = list(self.stats.clocks)  # type: ignore[arg-type]
            if len(clocks) < len(self._threads):
                return True  # one is starting: it takes a job
        now = counters.now()
        busy = [c for c in clocks if c.since]
        if busy and all(_needs_company(c, now) for c in busy):
            with self._lock:
                for _ in range(len(self._jobs)):
                    if self._idle:
                        self._wake_one()
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

    def _wake_one(self) -> None:
        """Wake the most recently idle thread; until it runs it counts as woken, so
        a burst of submits wakes one thread, not one per submit.  Holding ``_lock``."""
        self._idle.pop().release()
        self._woken += 1

    def _wake_all(self) -> None:
        while self._idle:
            self._wake_one()

    def stop(self, timeout: float = 5.0) -> None:
        stop_all(self._lock, self._threads, self.resize, timeout)

    def _loop(self) -> None:
        clock = _Thread()
        self.stats.thread_clock(clock)
        try:
            self._work(clock)
        finally:
            self.stats.drop_clock(clock)

    def _work(self, clock: _Thread) -> None:
        jobs = self._jobs
        lock = self._lock
        me = threading.current_thread()
        wake = threading.Lock()
        run = self.run
        set_thread_name(f"io:{self.name}")
        job: Client | Task | None = None
        woken = False
        while True:
            with lock:
                if job is not None:
                    self._busy -= 1
                if woken:
                    self._woken -= 1
                    woken = False
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
                    woken = True
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
                woken = True
                continue
            clock.job = job
            clock.since = counters.now()
            if type(job) is Task:
                job.run()
            else:
                run(job, self)  # type: ignore[arg-type]
            clock.since = 0.0
            clock.job = None


def _computes(clock: _Thread) -> bool:
    """The step the thread runs is in a state that computes (read from another thread)."""
    job = clock.job
    return job is not None and job.state.computes


def _needs_company(clock: _Thread, now: float) -> bool:
    """The grower's look at one running thread (the rule in the module docstring)."""
    since = clock.since  # read once: its thread sets it to 0 outside the lock as the step ends
    if not since:
        return False  # no longer running
    took = now - since
    if took >= STUCK_AFTER:
        return True
    if took < LONG_STEP:
        return False
    state = _task_file(clock.tid, "stat")
    state = state[state.rindex(b")") + 2 :][:1] if state else b""
    if state == b"D":
        return True
    # A thread just woken to take the interpreter lock is R too, but still in futex().
    return state == b"R" and _computes(clock) and _task_file(clock.tid, "syscall").split(b" ", 1)[0] != _FUTEX


# The futex syscall's number as /proc/TID/syscall shows it: a thread in it waits for
# a lock (the interpreter's, most likely), not for a disk.  Unknown: never matches.
_FUTEX = str(syscall_number("futex") or "").encode()


def _task_file(tid: int, name: str) -> bytes:
    """/proc/self/task/TID/NAME of a thread of this process (b"" if it is gone):
    open, read, close (a file object adds an fstat, an ioctl and seeks)."""
    try:
        fd = os.open(f"/proc/self/task/{tid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 4096)  # stat and syscall are one short line each
    except OSError:
        return b""
    finally:
        os.close(fd)


class _Grower:
    """The grower of the module docstring: one thread per process that looks at
    pools where jobs wait behind busy threads (IoPool.grow); asleep when no job waits."""

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
