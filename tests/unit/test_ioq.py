"""Device I/O pools without sockets: ordering, resizing, failing tasks."""
from __future__ import annotations

import threading
import time

from mogstored.event.core import EventQueue
from mogstored.store.iopool import IoPool, IoQueues


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


def test_resize_starts_and_stops_real_threads() -> None:
    queue, pool = _pool(10)
    assert _pool_threads("test") == 10
    pool.resize(2)
    _wait(lambda: _pool_threads("test") == 2)
    pool.resize(5)
    _wait(lambda: _pool_threads("test") == 5)
    pool.stop()
    _wait(lambda: _pool_threads("test") == 0)
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
