"""The event core with stand-in clients: the hop to a client's pool, RUN,
failing steps, the worker thread set; the acceptor with a real listener."""
from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from mogstored import log
from mogstored.event.acceptor import Acceptor
from mogstored.event import later
from mogstored.event.core import EventQueue
from mogstored.event.step import Next, State


class FakePool:
    def __init__(self) -> None:
        self.submitted: list[object] = []

    def submit(self, client: object) -> None:
        self.submitted.append(client)


ANY = State("any", on_pool=False)
DISK = State("disk", on_pool=True)


class FakeClient:
    """Runs the scripted results of its steps; records where each ran."""

    def __init__(self, sock: socket.socket, script: list[object], state: State = ANY) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = state
        self.pool = FakePool()
        self.script = script
        self.ran_on: list[object] = []
        self.closed = threading.Event()

    def step(self, pool: object) -> Next:
        self.ran_on.append(pool)
        nxt = self.script.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        if nxt is Next.RUN:
            self.state = DISK
        return nxt  # type: ignore[return-value]

    def close(self) -> None:
        self.closed.set()
        self.sock.close()

    def idle(self) -> bool:
        return True


def _wait(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def queue():
    q = EventQueue(1)
    yield q
    q.stop()


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_a_pool_state_is_handed_to_its_pool_not_stepped_here(queue: EventQueue) -> None:
    a, b = socket.socketpair()
    client = FakeClient(a, [Next.READ], state=DISK)
    queue.clients[client.fd] = client
    queue.run(client)
    assert client.ran_on == [] and client.pool.submitted == [client]
    queue.run(client, client.pool)  # type: ignore[arg-type]  # the pool thread runs it
    assert client.ran_on == [client.pool]
    b.close()
    client.close()


def test_run_goes_on_where_the_new_state_runs(queue: EventQueue) -> None:
    a, b = socket.socketpair()
    client = FakeClient(a, [Next.RUN, Next.READ])
    queue.clients[client.fd] = client
    queue.run(client)
    assert client.ran_on == [None] and client.pool.submitted == [client]  # hopped after RUN
    b.close()
    client.close()


def test_a_failing_step_costs_its_connection_only(queue: EventQueue, monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr(log, "error", errors.append)
    a, b = socket.socketpair()
    client = FakeClient(a, [ValueError("bug")])
    queue.clients[client.fd] = client
    queue.run(client)
    assert client.closed.is_set() and client.fd not in queue.clients
    assert errors == [f"client fd={client.fd} failed: ValueError('bug')"]
    b.close()


def test_a_readable_client_is_stepped_by_a_worker(queue: EventQueue) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    client = FakeClient(a, [Next.CLOSE])
    queue.add(client)
    b.sendall(b"x")
    assert client.closed.wait(5)
    assert client.ran_on == [None] and not queue.clients
    b.close()


def test_a_trickling_client_is_read_again_only_after_the_delay(queue: EventQueue) -> None:
    """LATER: the client is not watched for DELAY, however much arrives meanwhile,
    then it is stepped again as readable."""
    a, b = socket.socketpair()
    a.setblocking(False)
    client = FakeClient(a, [Next.LATER, Next.CLOSE])
    stepped_at: list[float] = []
    step = client.step
    client.step = lambda pool: (stepped_at.append(time.monotonic()), step(pool))[1]  # type: ignore[method-assign]
    queue.add(client)
    b.sendall(b"x")
    _wait(lambda: len(stepped_at) == 1)
    b.sendall(b"more")  # would wake a watched client at once
    assert client.closed.wait(5)
    assert stepped_at[1] - stepped_at[0] >= later.DELAY
    b.close()


def test_held_clients_come_back_in_order() -> None:
    back: list[int] = []
    held = later.Later(lambda c: back.append(c.fd))  # type: ignore[attr-defined]
    clients = [type("C", (), {"fd": n})() for n in range(5)]
    for c in clients:
        held.hold(c)  # type: ignore[arg-type]
    _wait(lambda: len(back) == 5)
    assert back == [0, 1, 2, 3, 4]


def test_worker_threads_resize_and_stop() -> None:
    before = _threads("epoll")
    q = EventQueue(3)
    assert _threads("epoll") == before + 3
    q.resize(1)
    _wait(lambda: _threads("epoll") == before + 1)
    q.resize(4)
    _wait(lambda: _threads("epoll") == before + 4)
    q.stop()
    _wait(lambda: _threads("epoll") == before)


class FakeBoard:
    index = 0

    def __init__(self, least: int) -> None:
        self.least = least
        self.published: list[int] = []
        self.withdrawn: list[int] = []

    def publish(self, count: int) -> None:
        self.published.append(count)

    def withdraw(self, index: int) -> None:
        self.withdrawn.append(index)

    def least_other(self, unresponsive: dict[int, int]) -> tuple[int, int]:
        return (-1, 2**31 - 1) if 1 in unresponsive else (1, self.least)


@pytest.fixture
def kick():
    old = signal.signal(signal.SIGUSR1, lambda s, f: None)
    signal.siginterrupt(signal.SIGUSR1, True)
    yield signal.SIGUSR1
    signal.signal(signal.SIGUSR1, old)


def test_acceptor_queues_connections_and_stops_on_its_signal(queue: EventQueue, kick: int) -> None:
    made: list[FakeClient] = []
    nodelay: list[int] = []

    def make(sock: socket.socket) -> FakeClient:
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        made.append(FakeClient(sock, [Next.CLOSE]))
        return made[-1]

    with socket.create_server(("127.0.0.1", 0)) as lsock:
        board = FakeBoard(least=0)
        acc = Acceptor(lsock, queue, make, 2, kick, lambda e: None, board)
        acc.start()
        with socket.create_connection(lsock.getsockname()) as c:
            c.sendall(b"x")
            _wait(lambda: len(made) == 1)
            assert made[0].closed.wait(5)  # added to epoll, stepped by a worker
            assert nodelay == [1]
        acc.stop()
        assert not any(t.is_alive() for t in acc.threads)
        assert board.withdrawn == [0] and board.published


def test_acceptor_lets_a_turn_pass_but_not_forever(queue: EventQueue) -> None:
    """Holding more than the least loaded worker + SLACK it waits, until PATIENCE
    runs out; then that worker is not waited for again until its count moves."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        acc = Acceptor(lsock, queue, lambda s: None, 1, signal.SIGUSR1, lambda e: None, FakeBoard(least=0))  # type: ignore[arg-type, return-value]
        for fd in range(1000, 1000 + Acceptor.SLACK + 1):
            queue.clients[fd] = None  # type: ignore[assignment]
        started = time.monotonic()
        acc._take_turn()
        assert time.monotonic() - started >= Acceptor.PATIENCE
        assert acc._unresponsive == {1: 0}
        started = time.monotonic()
        acc._take_turn()
        assert time.monotonic() - started < Acceptor.PATIENCE
        queue.clients.clear()
