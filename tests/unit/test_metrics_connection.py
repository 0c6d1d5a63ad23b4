"""MetricsConnection steps driven over a socketpair, with a stub node."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from mogstored.event.step import Next
from mogstored.metrics import connection as metrics_connection
from mogstored.metrics.connection import ANSWERING, READING, STATES, MetricsConnection


@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setattr(metrics_connection, "exposition", lambda metrics: b"mogstored_build_info 1.0\n")
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    process = SimpleNamespace(quitting=False)
    conn = MetricsConnection(ours, SimpleNamespace(ioq=SimpleNamespace(shared=None)), process)  # type: ignore[arg-type]
    yield conn, peer, process
    conn.close()
    peer.close()


def run(conn: MetricsConnection) -> Next:
    """Steps until the connection waits (what the core does with RUN)."""
    while (nxt := conn.step(None)) is Next.RUN:
        pass
    return nxt


def test_states_never_run_in_a_pool() -> None:
    assert STATES == (READING, ANSWERING) and not any(s.on_pool for s in STATES)


def test_pipelined_requests_answered_in_order_then_waits(pair) -> None:
    conn, peer, _ = pair
    peer.sendall(b"GET /metrics HTTP/1.1\r\n\r\nGET /other HTTP/1.1\r\n\r\nDELETE /metrics HTTP/1.1\r\n\r\n")
    assert run(conn) is Next.READ and conn.idle()
    data = peer.recv(65536)
    heads = [part.split(b"\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert heads == [b"200 OK", b"404 Not Found", b"405 Method Not Allowed"]
    assert b"Content-Type: text/plain; version=0.0.4\r\nContent-Length: 25\r\n" in data
    assert data.count(b"mogstored_build_info 1.0\n") == 1


def test_head_has_no_body_and_a_bad_head_closes(pair) -> None:
    conn, peer, _ = pair
    peer.sendall(b"HEAD /metrics HTTP/1.1\r\n\r\nBREW /metrics HTTP/1.1\r\n\r\n")
    assert run(conn) is Next.CLOSE
    data = peer.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"mogstored_build_info" not in data
    assert b"HTTP/1.1 400 Bad Request\r\n" in data and b"Connection: close\r\n" in data


def test_shutting_down_answers_then_closes(pair) -> None:
    conn, peer, process = pair
    process.quitting = True
    peer.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert run(conn) is Next.CLOSE
    assert b"Connection: close\r\n" in peer.recv(65536)
