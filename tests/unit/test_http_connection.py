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

from conftest import mounted, remount_cold

from mogstored import counters
from mogstored.event.step import Next
from mogstored.http import connection, states
from mogstored.http.connection import TRICKLE_PIECES, HttpConnection
from mogstored.http.get import INLINE_MAX
from mogstored.store.fs import Docroot

POOL = SimpleNamespace(name="dev1", stats=counters.PoolStats("dev1"))  # stands in for a device I/O pool


@pytest.fixture
def pair(tmp_path: Path):
    (tmp_path / "dev1").mkdir()
    (tmp_path / "dev1" / "f").write_bytes(b"0123456789")
    changed: list[str] = []
    svc = SimpleNamespace(docroot=Docroot(str(tmp_path)), usage_body=lambda path: None, on_change=changed.append,
                          refuses_writes=lambda path: False, durable=False, trusts=lambda host: True,
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
    assert len(set(names)) == len(names) == 10
    on_pool = {s.name for s in states.STATES if s.on_pool}
    assert on_pool == {"opening", "sending", "sending-bulk", "creating", "receiving", "receiving-bulk", "deleting"}
    assert {s.name for s in states.STATES if s.computes} == {"sending-bulk", "receiving-bulk"}
    assert set(connection._STEPS) == set(states.STATES)  # every state has its step, in one table


def test_cached_get_is_answered_on_the_event_thread(pair) -> None:
    """A file just written is in the dentry and page caches: no hop to the pool."""
    conn, peer, tmp_path, _ = pair
    assert not (tmp_path / "dev1" / "nothing").exists()  # now a negative dentry
    sent, counts = POOL.stats.sent, [counters.requests[0][s] for s in (200, 206, 404)]
    for request in (b"GET /dev1/f HTTP/1.1\r\n\r\n", b"GET /dev1/f HTTP/1.1\r\nRange: bytes=2-4\r\n\r\n",
                    b"HEAD /dev1/f HTTP/1.1\r\n\r\n", b"GET /dev1/nothing HTTP/1.1\r\n\r\n"):
        peer.sendall(request)
        nxt = conn.step(None)  # READING dispatches to LOOKING, which runs at once (no hop)
        assert nxt is Next.READ, (request, conn.state)
        assert conn.state is states.READING and conn.transfer is states.NO_TRANSFER and conn.pool is POOL
    reply = _recv_all(peer)
    heads = reply.split(b"HTTP/1.1 ")[1:]
    assert heads[0].startswith(b"200 OK\r\n") and heads[0].endswith(b"\r\n\r\n0123456789")
    assert heads[1].startswith(b"206 Partial Content\r\n") and heads[1].endswith(b"\r\n\r\n234")
    assert heads[2].startswith(b"200 OK\r\n") and b"Content-Length: 10\r\n" in heads[2]
    assert heads[2].endswith(b"\r\n\r\n")
    assert heads[3].startswith(b"404 Not Found\r\n")  # a cached negative entry is an answer
    assert conn.idle()
    # metrics: body bytes (10 + 3) and one GET each of 200, 206, 404
    assert POOL.stats.sent - sent == 13
    assert [counters.requests[0][s] for s in (200, 206, 404)] == [c + 1 for c in counts]


def test_cached_large_file_is_opened_here_and_sent_from_the_pool(pair) -> None:
    conn, peer, tmp_path, _ = pair
    body = os.urandom(INLINE_MAX + 1)
    (tmp_path / "dev1" / "big").write_bytes(body)
    peer.sendall(b"GET /dev1/big HTTP/1.1\r\n\r\n")
    assert conn.step(None) is Next.RUN
    assert conn.state is states.SENDING  # open and fstat done (LOOKING); sendfile only in the pool
    assert conn.step(POOL) is Next.READ
    assert _recv_all(peer).endswith(b"\r\n\r\n" + body)


def _cold_step(conn: HttpConnection, peer: socket.socket, request: bytes, pool_state: states.State) -> bytes:
    peer.sendall(request)
    assert conn.step(None) is Next.RUN  # READING, then LOOKING found nothing cached
    assert conn.state is pool_state and conn.state.on_pool  # the core hops to the pool
    assert conn.step(POOL) is Next.READ
    return _recv_all(peer)


def test_what_is_not_cached_goes_to_the_pool(tmp_path: Path) -> None:
    """A path not in the dentry cache (RESOLVE_CACHED: EAGAIN) is opened in the pool;
    a body not in the page cache (RWF_NOWAIT: EAGAIN) is sent from the pool."""
    root = tmp_path / "root"
    with mounted(root / "dev1", "ext4", tmp_path, 16) as dev1:
        (dev1 / "f").write_bytes(b"0123456789")
        (dev1 / "g").write_bytes(b"abc")
        remount_cold(dev1, tmp_path)
        svc = SimpleNamespace(docroot=Docroot(str(root)), usage_body=lambda path: None, trusts=lambda host: True,
                              process=SimpleNamespace(quitting=False, retry_open=lambda fn: fn()),
                              ioq=SimpleNamespace(for_path=lambda docroot, path: POOL, shared=None))
        ours, peer = _tcp_pair()
        conn = HttpConnection(ours, svc, get_only=False)  # type: ignore[arg-type]
        try:
            reply = _cold_step(conn, peer, b"GET /dev1/f HTTP/1.1\r\n\r\n", states.OPENING)
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n0123456789")
            (dev1 / "g").stat()  # its dentry is cached now, its data still is not
            reply = _cold_step(conn, peer, b"GET /dev1/g HTTP/1.1\r\n\r\n", states.SENDING)
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\nabc")
        finally:
            conn.close()
            peer.close()
            os.close(svc.docroot.fd)


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
    assert conn.step(None) is Next.READ  # the whole head is there: answered from the caches
    assert conn.state is states.READING and b"200 OK" in _recv_all(peer)


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
