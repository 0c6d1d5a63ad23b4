"""HttpConnection's state machine driven step by step over a loopback TCP pair, as the
event core would drive it (the test plays the core: it runs pool states with a
stand-in pool)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mogstored import counters
from mogstored.event.step import Next
from mogstored.http import states
from mogstored.http.connection import TRICKLE_PIECES, HttpConnection
from mogstored.store.fs import Docroot

POOL = SimpleNamespace(name="dev1", stats=counters.PoolStats("dev1"))  # stands in for a device I/O pool


@pytest.fixture
def pair(tmp_path: Path):
    (tmp_path / "dev1").mkdir()
    (tmp_path / "dev1" / "f").write_bytes(b"0123456789")
    changed: list[str] = []
    svc = SimpleNamespace(docroot=Docroot(str(tmp_path)), usage_body=lambda path: None, on_change=changed.append,
                          refuses_writes=lambda path: False, durable=False,
                          ioq=SimpleNamespace(for_path=lambda docroot, path: POOL, shared=None),
                          process=SimpleNamespace(quitting=False, retry_open=lambda fn: fn()))
    ours, peer = _tcp_pair()
    peer.settimeout(5)
    conn = HttpConnection(ours, svc, get_only=False)  # type: ignore[arg-type]
    yield conn, peer, tmp_path, changed
    conn.close()
    peer.close()
    os.close(svc.docroot.fd)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        peer = socket.create_connection(lsock.getsockname())
        ours, _ = lsock.accept()
    ours.setblocking(False)
    return ours, peer


def _recv_all(peer: socket.socket) -> bytes:
    peer.settimeout(0.2)
    data = b""
    try:
        while chunk := peer.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_states_are_listed_once_and_say_where_they_run() -> None:
    names = [s.name for s in states.STATES]
    assert len(set(names)) == len(names) == 7
    on_pool = {s.name for s in states.STATES if s.on_pool}
    assert on_pool == {"opening", "sending", "creating", "receiving", "deleting"}


def test_get_hops_to_the_pool_then_answers_and_waits_for_the_next_request(pair) -> None:
    conn, peer, _, _ = pair
    peer.sendall(b"GET /dev1/f HTTP/1.1\r\n\r\n")
    sent, ok = POOL.stats.sent, counters.requests[0][200]
    assert conn.step(None) is Next.RUN
    assert conn.state is states.OPENING and conn.pool is POOL
    assert conn.step(POOL) is Next.READ
    assert (POOL.stats.sent - sent, counters.requests[0][200] - ok) == (10, 1)  # metrics: body bytes, one 200
    assert conn.state is states.READING and conn.transfer is states.NO_TRANSFER
    reply = _recv_all(peer)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n0123456789")
    assert conn.idle()


def test_refused_path_is_answered_without_the_pool(pair) -> None:
    conn, peer, _, _ = pair
    peer.sendall(b"GET /dev1/../f HTTP/1.1\r\n\r\n")
    assert conn.step(None) is Next.READ
    assert conn.state is states.READING
    assert _recv_all(peer).startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_delete_of_a_device_directory_is_refused_on_the_event_thread(pair) -> None:
    conn, peer, tmp_path, _ = pair
    peer.sendall(b"DELETE /dev1 HTTP/1.1\r\n\r\n")
    assert conn.step(None) is Next.READ
    assert _recv_all(peer).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert (tmp_path / "dev1").is_dir()


def test_a_head_in_many_small_pieces_is_read_later(pair) -> None:
    """The first pieces of a head are waited for in epoll as usual; from the
    TRICKLE_PIECES-th on the connection asks to be read again only later."""
    conn, peer, _, _ = pair
    head = b"GET /dev1/f HTTP/1.1\r\nX-Slow: abcdefghijklmnop\r\n\r\n"
    answers = []
    for i in range(TRICKLE_PIECES + 2):
        peer.sendall(head[i : i + 1])
        time.sleep(0.01)
        answers.append(conn.step(None))
    assert answers[: TRICKLE_PIECES - 1] == [Next.READ] * (TRICKLE_PIECES - 1)
    assert answers[TRICKLE_PIECES - 1 :] == [Next.LATER] * 3
    peer.sendall(head[TRICKLE_PIECES + 2 :])
    time.sleep(0.01)
    assert conn.step(None) is Next.RUN  # the whole head is there: on to the pool
    assert conn.state is states.OPENING


def test_pipelined_requests_go_behind_other_clients(pair) -> None:
    conn, peer, _, _ = pair
    peer.sendall(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert conn.step(None) is Next.ACTIVE
    assert conn.step(None) is Next.READ
    assert _recv_all(peer).count(b"HTTP/1.1 200 OK\r\n") == 2


def test_put_body_in_pieces_waits_in_epoll_then_commits(pair) -> None:
    conn, peer, tmp_path, changed = pair
    peer.sendall(b"PUT /dev1/new HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    assert conn.step(None) is Next.RUN
    assert conn.state is states.CREATING
    assert conn.step(POOL) is Next.READ  # the rest of the body has not arrived
    assert conn.state is states.RECEIVING and conn.state.on_pool
    received = POOL.stats.received
    peer.sendall(b"456789")
    assert conn.step(POOL) is Next.READ
    assert _recv_all(peer).startswith(b"HTTP/1.1 201 Created\r\n")
    assert POOL.stats.received - received == 6  # metrics: the bytes written by this step
    assert (tmp_path / "dev1" / "new").read_bytes() == b"0123456789"
    assert changed == ["dev1/new"]


def test_put_cut_short_closes_and_leaves_no_file(pair) -> None:
    conn, peer, tmp_path, _ = pair
    peer.sendall(b"PUT /dev1/cut HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    assert conn.step(None) is Next.RUN
    assert conn.step(POOL) is Next.READ
    peer.shutdown(socket.SHUT_WR)
    assert conn.step(POOL) is Next.CLOSE
    assert sorted(p.name for p in (tmp_path / "dev1").iterdir()) == ["f"]


def test_bad_head_is_answered_and_closes(pair) -> None:
    conn, peer, _, _ = pair
    peer.sendall(b"BREW /pot HTTP/1.1\r\n\r\n")
    assert conn.step(None) is Next.CLOSE
    assert _recv_all(peer).startswith(b"HTTP/1.1 400 Bad Request\r\n")
