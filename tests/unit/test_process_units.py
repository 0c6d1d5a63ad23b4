"""Load board, descriptor expiry and the arbiter's respawn bookkeeping, in process."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import time

import pytest

from mogstored import log
from mogstored.event import expiry
from mogstored.event.expiry import Expiry
from mogstored.process import arbiter as arbiter_mod
from mogstored.process.arbiter import FORK_RETRY, Arbiter
from mogstored.process.board import ABSENT, LoadBoard
from mogstored.process.upgrade import Upgrade


# -- load board -------------------------------------------------------------------
def test_board_names_the_least_loaded_other_worker() -> None:
    board = LoadBoard(3)
    assert board.least_other({}) == (-1, ABSENT)  # nobody accepting yet
    for index, count in ((0, 5), (1, 2), (2, 7)):
        board.index = index
        board.publish(count)
    board.index = 0
    assert board.least_other({}) == (1, 2)
    board.withdraw(1)
    assert board.least_other({}) == (2, 7)


def test_board_skips_an_unresponsive_worker_until_its_count_moves() -> None:
    board = LoadBoard(2)
    board.index = 1
    board.publish(0)
    board.index = 0
    unresponsive = {1: 0}
    assert board.least_other(unresponsive) == (-1, ABSENT)
    board.index = 1
    board.publish(1)  # it accepted something
    board.index = 0
    assert board.least_other(unresponsive) == (1, 1)
    assert unresponsive == {}


# -- descriptor expiry ------------------------------------------------------------
class _Client:
    def __init__(self, sock: socket.socket, expirable: bool) -> None:
        self.sock = sock
        self.expirable = expirable


def test_relief_runs_at_most_once_a_second(monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr(log, "error", errors.append)
    a, b = socket.socketpair()
    exp = Expiry(lambda: [_Client(a, True)])
    now = int(time.time())
    while int(time.time()) == now:  # start at the beginning of a second
        time.sleep(0.01)
    assert exp.relieve(lambda: errors.append("first"))
    assert not exp.relieve(lambda: errors.append("second"))
    assert errors == ["first", "expired 0 idle connections (>5 sec)"]  # not TCP: never idle
    a.close()
    b.close()


def test_open_is_retried_once_when_descriptors_ran_out(monkeypatch) -> None:
    monkeypatch.setattr(log, "error", lambda m: None)
    monkeypatch.setattr(expiry, "OPEN_RETRY_PAUSE", 0)
    calls = []

    def opener() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return 7

    assert Expiry(lambda: []).retry_open(opener) == 7
    assert len(calls) == 2


def test_other_open_errors_are_not_retried() -> None:
    calls = []

    def opener() -> int:
        calls.append(1)
        raise OSError(errno.ENOENT, "No such file or directory")

    with pytest.raises(FileNotFoundError):
        Expiry(lambda: []).retry_open(opener)
    assert len(calls) == 1


def test_idle_tcp_client_is_shut_down_but_not_the_sidechannel(monkeypatch) -> None:
    monkeypatch.setattr(log, "error", lambda m: None)
    monkeypatch.setattr(expiry, "IDLE_MS", -1)  # everything established counts as idle
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        http_peer = socket.create_connection(lsock.getsockname())
        http, _ = lsock.accept()
        mgmt_peer = socket.create_connection(lsock.getsockname())
        mgmt, _ = lsock.accept()
    assert Expiry(lambda: [_Client(http, True), _Client(mgmt, False)]).relieve(lambda: None)
    http_peer.settimeout(5)
    assert http_peer.recv(1) == b""  # shut down: EOF
    mgmt_peer.settimeout(0.2)
    with pytest.raises(TimeoutError):
        mgmt_peer.recv(1)
    for s in (http_peer, http, mgmt_peer, mgmt):
        s.close()


def test_heard_within_counts_unread_data() -> None:
    """A request that arrived long ago but was not read yet (its reader short of
    CPU) keeps a client from being taken for idle at a graceful stop."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        peer = socket.create_connection(lsock.getsockname())
        sock, _ = lsock.accept()
    sock.setblocking(False)
    with peer, sock:
        assert expiry.heard_within(sock, 10_000)  # established just now
        assert not expiry.heard_within(sock, 0)  # nothing sent
        peer.sendall(b"GET / HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 5
        while not expiry.heard_within(sock, 0):  # once it has arrived: unread, whatever its age
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sock.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
        assert not expiry.heard_within(sock, 0)  # read: nothing waits


# -- arbiter ---------------------------------------------------------------------
@pytest.fixture
def arb(monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(log, "error", errors.append)
    a = Arbiter([], 2, False, Upgrade(None, []))
    spawned: list[int] = []
    monkeypatch.setattr(a, "spawn", spawned.append)
    return a, spawned, errors


def _dead_child() -> int:
    proc = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    deadline = time.monotonic() + 5
    while open(f"/proc/{proc.pid}/stat").read().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.returncode = 3  # reaped by the arbiter, not by Popen
    return proc.pid


def test_a_dead_worker_is_respawned_in_its_slot(arb) -> None:
    a, spawned, errors = arb
    pid = _dead_child()
    a.workers[pid] = 1
    a.board.index = 0
    a.board.publish(9)  # slot 0 stands for a live worker; slot 1 is the dead one's
    a.reap()
    assert spawned == [1] and pid not in a.workers
    assert a.board.least_other({}) == (-1, ABSENT)  # its slot was withdrawn
    assert errors == [f"worker[1] PID:{pid} died with status={3 << 8}, respawning"]


def test_no_respawn_once_quitting(arb) -> None:
    a, spawned, _ = arb
    a.workers[_dead_child()] = 0
    a.quitting = True
    a.reap()
    assert spawned == [] and a.workers == {}


def test_a_failed_fork_is_retried_later(monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr(log, "error", errors.append)

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(arbiter_mod.os, "fork", no_fork)
    a = Arbiter([], 1, False, Upgrade(None, []))
    before = time.monotonic()
    a.spawn(0)
    assert a.workers == {} and before + FORK_RETRY <= a.unborn[0] <= time.monotonic() + FORK_RETRY
    assert errors == ["fork() failed: Resource temporarily unavailable, sleeping for 10s"]
    assert 0 < (a._timeout() or 0) <= FORK_RETRY
    a.retry_forks()  # not due yet: nothing happens
    assert list(a.unborn) == [0]
    assert os.getpid() == a.pid
