"""Device I/O pools without sockets: ordering, resizing, failing tasks."""
from __future__ import annotations

import hashlib
import threading
import time

from mogstored import counters
from mogstored.event.core import EventQueue
from mogstored.event.step import State
from mogstored.store import iopool
from mogstored.store.iopool import IoPool, IoQueues, Task


def _pool(n: int) -> tuple[EventQueue, IoPool]:
    queue = EventQueue(1)
    return queue, IoPool("test", queue.run, n)


def _wait(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_failing_task_does_not_kill_its_thread() -> None:
    queue, pool = _pool(1)
    done = threading.Event()
    pool.call(lambda: 1 / 0)
    pool.call(done.set)
    assert done.wait(5)
    pool.stop()
    queue.stop()


def test_one_thread_runs_tasks_in_submission_order() -> None:
    queue, pool = _pool(1)
    seen: list[int] = []
    for i in range(100):
        pool.call(lambda i=i: seen.append(i))
    _wait(lambda: len(seen) == 100)
    assert seen == list(range(100))
    pool.stop()
    queue.stop()


def _pool_threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == f"io:{name}")


def test_threads_start_with_work_up_to_the_limit_and_idle_ones_leave(monkeypatch) -> None:
    monkeypatch.setattr(iopool, "IDLE_EXIT", 0.2)
    queue, pool = _pool(3)
    assert _pool_threads("test") == 0  # nothing to do: no thread
    gate = threading.Event()
    done: list[int] = []

    def blocked(i: int) -> None:
        gate.wait(10)
        done.append(i)

    for i in range(5):
        pool.call(lambda i=i: blocked(i))
    _wait(lambda: _pool_threads("test") == 3)
    time.sleep(0.1)
    assert _pool_threads("test") == 3 and not done  # two tasks wait for a thread
    pool.resize(4)
    _wait(lambda: _pool_threads("test") == 4)  # a queued task gets a thread at once
    gate.set()
    _wait(lambda: len(done) == 5)
    _wait(lambda: _pool_threads("test") == 0)  # idle for IDLE_EXIT: gone
    pool.call(lambda: done.append(5))
    _wait(lambda: len(done) == 6)
    assert _pool_threads("test") == 1
    pool.resize(0)
    _wait(lambda: _pool_threads("test") == 0)  # an idle surplus thread leaves at once
    pool.stop()
    queue.stop()


def test_aio_threads_brings_pools_with_threads_to_n_and_leaves_idle_devices_alone(monkeypatch) -> None:
    """``server aio_threads = N`` shows in the thread count: a pool with threads and the
    shared pool get exactly N at once; a device pool without threads keeps none.  The
    extra threads leave after IDLE_EXIT without work, like any."""
    monkeypatch.setattr(iopool, "IDLE_EXIT", 0.5)
    queue = EventQueue(1)
    ioq = IoQueues(queue.run)
    ioq.set_devices("/r", {71, 72})
    busy, idle = ioq.for_path("/r", "/dev71/x"), ioq.for_path("/r", "/dev72/x")
    ran = threading.Event()
    busy.call(ran.set)
    assert ran.wait(5)
    assert (_pool_threads("dev71"), _pool_threads("dev72"), _pool_threads("shared")) == (1, 0, 0)
    ioq.resize(6)
    assert (_pool_threads("dev71"), _pool_threads("dev72"), _pool_threads("shared")) == (6, 0, 6)
    ioq.resize(2)
    _wait(lambda: (_pool_threads("dev71"), _pool_threads("shared")) == (2, 2))  # idle surplus: at once
    assert _pool_threads("dev72") == 0 and idle.limit == busy.limit == ioq.shared.limit == 2
    _wait(lambda: _pool_threads("dev71") + _pool_threads("shared") == 0)  # then IDLE_EXIT
    ioq.stop()
    queue.stop()


def test_one_idle_thread_serves_tasks_one_at_a_time() -> None:
    queue, pool = _pool(10)
    for i in range(20):
        done = threading.Event()
        pool.call(done.set)
        assert done.wait(5)
        time.sleep(0.005)  # the thread is idle again before the next task
    assert _pool_threads("test") == 1
    pool.stop()
    queue.stop()


def test_paths_find_their_device_pool() -> None:
    queue = EventQueue(1)
    ioq = IoQueues(queue.run, per_device=1)
    ioq.set_devices("/docroot", {1, 12})
    dev12 = ioq.for_path("/docroot", "/dev12/0/000/000/0000000001.fid")
    assert dev12 is ioq.for_path("/docroot", "//dev12/usage")  # sidechannel paths may double the slash
    assert dev12 is not ioq.for_path("/docroot", "/dev1/x")
    for outside in ("/", "/foo", "/dev3/x", "/devx/y", "/foo/dev1/x"):
        assert ioq.for_path("/docroot", outside) is ioq.shared
    assert ioq.for_path("/elsewhere", "/dev1/x") is ioq.shared  # pools belong to one docroot
    ioq.stop()
    queue.stop()


def test_steps_that_only_compute_share_one_thread(monkeypatch) -> None:
    """More threads only help while the ones there wait for a disk: a burst of quick
    steps queues behind the one thread instead of starting more (interpreter lock)."""
    monkeypatch.setattr(iopool, "STUCK_AFTER", 0.2)
    queue, pool = _pool(10)
    done: list[int] = []

    def quick(i: int) -> None:
        sum(range(500))
        done.append(i)

    for i in range(300):
        pool.call(lambda i=i: quick(i))
    _wait(lambda: len(done) == 300)
    assert done == list(range(300)) and _pool_threads("test") == 1
    pool.stop()
    queue.stop()


HASHING = State("hashing", on_pool=True, computes=True)  # a state that says it computes


def _hash_until(gate: threading.Event) -> None:
    h, block = hashlib.md5(), bytes(8 << 20)
    while not gate.is_set():
        h.update(block)


def _jobs_behind_a_hashing_step(monkeypatch, declare: bool):
    """A pool whose one thread hashes until ``gate`` is set, with 3 jobs queued
    behind it (no STUCK_AFTER: only the grower's look at the thread decides)."""
    monkeypatch.setattr(iopool, "STUCK_AFTER", 60.0)
    queue, pool = _pool(10)
    gate = threading.Event()
    done: list[int] = []
    pool.submit(Task(lambda: _hash_until(gate), HASHING if declare else iopool.TASK))
    _wait(lambda: _pool_threads("test") == 1)
    for i in range(3):
        pool.call(lambda i=i: done.append(i))
    return queue, pool, gate, done


def test_a_step_hashing_outside_the_interpreter_lock_gets_company(monkeypatch) -> None:
    """A digest says it computes outside the lock: a second thread runs beside it."""
    queue, pool, gate, done = _jobs_behind_a_hashing_step(monkeypatch, declare=True)
    try:
        _wait(lambda: len(done) == 3)
        assert _pool_threads("test") >= 2
    finally:
        gate.set()
    pool.stop()
    queue.stop()


def test_a_running_step_that_did_not_say_it_computes_gets_no_company(monkeypatch) -> None:
    """Running outside the lock is also what a page-cache PUT does between short system
    calls, where more threads only add lock hand-offs: the jobs behind it wait."""
    queue, pool, gate, done = _jobs_behind_a_hashing_step(monkeypatch, declare=False)
    try:
        time.sleep(0.3)  # 60 looks of the grower
        assert done == [] and _pool_threads("test") == 1
    finally:
        gate.set()
    _wait(lambda: len(done) == 3)
    pool.stop()
    queue.stop()


def test_the_grower_tells_a_thread_waiting_for_a_lock_from_one_hashing() -> None:
    """Read from /proc: a thread blocked on a lock (futex) is not worth company even
    in a computing step; one hashing is."""
    lock = threading.Lock()
    lock.acquire()
    gate = threading.Event()
    clocks: list[iopool._Thread] = []

    def clocked(fn):
        def run() -> None:
            clock = iopool._Thread()  # this thread's tid
            clock.job = Task(fn, HASHING)
            clock.since = counters.now()
            clocks.append(clock)
            fn()
        return threading.Thread(target=run)

    waiter = clocked(lock.acquire)
    hasher = clocked(lambda: _hash_until(gate))
    waiter.start()
    _wait(lambda: len(clocks) == 1)
    hasher.start()
    _wait(lambda: len(clocks) == 2)
    try:
        time.sleep(0.05)  # the waiter is in futex() by now, both steps are long
        assert not any(iopool._needs_company(clocks[0], counters.now()) for _ in range(20))
        assert any(iopool._needs_company(clocks[1], counters.now()) for _ in range(200))
    finally:
        gate.set()
        lock.release()
        waiter.join()
        hasher.join()


def test_disk_waits_count_at_once_running_only_in_a_computing_step(monkeypatch) -> None:
    states = {"stat": b"1 (io:dev1) D 0", "syscall": b"17 0x1 0x2"}
    monkeypatch.setattr(iopool, "_task_file", lambda tid, name: states[name])
    clock = iopool._Thread()
    clock.job = Task(lambda: None)
    now = 100.0
    clock.since = now - 0.002
    assert iopool._needs_company(clock, now)  # a disk read of a few ms
    states["stat"] = b"1 (io:dev1) R 0"
    assert not iopool._needs_company(clock, now)  # running, but not in a computing state
    clock.job.state = HASHING
    assert iopool._needs_company(clock, now)
    states["syscall"] = iopool._FUTEX + b" 0x7f 0x89"
    assert not iopool._needs_company(clock, now)  # woken to take a lock
    states["stat"] = b"1 (io:dev1) S 0"
    assert not iopool._needs_company(clock, now)
    assert iopool._needs_company(clock, clock.since + iopool.STUCK_AFTER)  # stuck, whatever the state
    clock.since = now - iopool.LONG_STEP / 2
    states["stat"] = b"1 (io:dev1) D 0"
    assert not iopool._needs_company(clock, now)  # too short to tell


def test_threads_grown_for_a_hung_disk_are_not_woken_for_page_cache_work(monkeypatch) -> None:
    """Once the disk is back, a burst of quick steps runs on one thread while the
    others stay idle (each extra one would only hand the interpreter lock around)."""
    monkeypatch.setattr(iopool, "STUCK_AFTER", 0.05)
    queue, pool = _pool(10)
    gate = threading.Event()
    try:
        pool.call(lambda: gate.wait(10))
        for _ in range(3):
            pool.call(lambda: gate.wait(10))
        _wait(lambda: _pool_threads("test") == 4)
        gate.set()
        ran: list[int] = []
        _wait(lambda: pool.waiting == 0 and len(pool._idle) == 4)  # all four idle
        # From here no quick step counts as stuck, however long a busy CPU keeps it
        # off (50 ms did, with two CPU hogs beside the suite: a second thread woke).
        monkeypatch.setattr(iopool, "STUCK_AFTER", 3600.0)
        for _ in range(200):
            pool.call(lambda: ran.append(threading.get_ident()))
        _wait(lambda: len(ran) == 200)
        assert len(set(ran)) == 1 and _pool_threads("test") == 4
    finally:  # no thread left behind for the next test to count
        gate.set()
        pool.stop()
        queue.stop()


def test_a_submit_wakes_an_idle_thread_at_once_behind_stuck_or_computing_steps() -> None:
    """Without waiting for the grower's look: behind a long sweep, a hung disk or a
    digest, an idle thread is woken by the submit itself; behind a quick step, not."""
    queue, pool = _pool(10)
    running = iopool._Thread()
    running.job = job = Task(lambda: None)
    pool.stats.clocks.append(running)
    with pool._lock:
        running.since = counters.now()
        assert not pool._running_ones_want_company()  # a quick step: it takes the job next
        job.state = HASHING
        assert pool._running_ones_want_company()
        job.state = iopool.TASK
        running.since = counters.now() - iopool.STUCK_AFTER
        assert pool._running_ones_want_company()
    pool.stats.clocks.remove(running)
    pool.stop()
    queue.stop()


def test_a_stuck_thread_gets_company_for_the_jobs_behind_it(monkeypatch) -> None:
    monkeypatch.setattr(iopool, "STUCK_AFTER", 0.05)
    queue, pool = _pool(10)
    gate = threading.Event()
    done: list[int] = []
    pool.call(lambda: gate.wait(10))  # a disk call that hangs
    _wait(lambda: _pool_threads("test") == 1)
    for i in range(3):
        pool.call(lambda i=i: done.append(i))
    _wait(lambda: len(done) == 3)  # the grower started a thread for them
    assert not gate.is_set() and _pool_threads("test") >= 2
    gate.set()
    pool.stop()
    queue.stop()
