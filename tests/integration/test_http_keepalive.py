"""Persistent connections and pipelining (§3.3): order, flow control, half-close, no Nagle."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from conftest import Daemon

N_PIPELINED = 20_000
WIDTH = 5  # the "seq" file holds the decimal numbers 0..N_PIPELINED, 5 digits each


@pytest.fixture(scope="module")
def d(shared_daemon: Daemon) -> Daemon:
    dev1 = shared_daemon.docroot / "dev1"
    (dev1 / "seq").write_bytes(b"".join(b"%05d" % i for i in range(N_PIPELINED + 1)))
    (dev1 / "f").write_bytes(b"file")
    return shared_daemon


def seq_get(i: int, version: bytes = b"1.1") -> bytes:
    """A GET whose response body is the number i: responses out of order cannot match."""
    return b"GET /dev1/seq HTTP/%s\r\nRange: bytes=%d-%d\r\n\r\n" % (version, i * WIDTH, i * WIDTH + WIDTH - 1)


def test_20000_pipelined_gets_then_http10(d: Daemon) -> None:
    """About 1 MB of requests while the client reads nothing for a second: all answered in order."""
    data = b"".join(seq_get(i) for i in range(N_PIPELINED)) + seq_get(N_PIPELINED, b"1.0")
    with d.conn() as c:
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                c.send(data)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=sender)
        t.start()
        time.sleep(1)  # not reading: the server must stop and resume, not drop or deadlock
        c.sock.settimeout(60)
        for i in range(N_PIPELINED + 1):
            r = c.response()
            assert (r.status, r.body) == (206, b"%05d" % i)
        assert r.header("Connection") == b"close"
        assert c.at_eof()
        t.join(60)
        assert not t.is_alive() and not errors


def test_two_heads_in_a_row_are_prompt(d: Daemon) -> None:
    """Responses are not held back by Nagle/delayed-ACK (generous bound; best of 3 rounds)."""
    best = []
    with d.conn() as c:
        for _ in range(3):
            times = []
            for _ in range(2):
                t0 = time.monotonic()
                assert c.request(b"HEAD /dev1/f HTTP/1.1\r\n\r\n", head_only=True).status == 200
                times.append(time.monotonic() - t0)
            best.append(max(times))
    assert min(best) < 0.2, best


@pytest.mark.parametrize("requests_,count", [
    (b"GET /dev1/f HTTP/1.1\r\n\r\n", 1),
    (b"HEAD /dev1/f HTTP/1.1\r\n\r\n", 1),
    (b"GET /dev1/f HTTP/1.1\r\n\r\nGET /dev1/missing HTTP/1.1\r\n\r\nGET /dev1/f HTTP/1.1\r\n\r\n", 3),
    (b"PUT /dev1/hc HTTP/1.1\r\nContent-Length: 2\r\n\r\nhc", 1),
])
def test_half_close_is_honoured(d: Daemon, requests_: bytes, count: int) -> None:
    """After the client's EOF every pending request is still answered, then the server closes."""
    with d.conn() as c:
        c.send(requests_)
        c.sock.shutdown(socket.SHUT_WR)
        for _ in range(count):
            r = c.response(head_only=requests_.startswith(b"HEAD"))
            assert r.status in (200, 201, 404) and r.header("Connection") == b"keep-alive"
        assert c.at_eof()


def test_mixed_pipeline_in_one_packet(d: Daemon) -> None:
    """Requests right after a PUT body and after chunked trailers are served in order."""
    batch = (b"PUT /dev1/p/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
             b"PUT /dev1/p/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\nX-T: 1\r\n\r\n"
             b"GET /dev1/p/a HTTP/1.1\r\n\r\n"
             b"GET /dev1/p/b HTTP/1.1\r\nRange: bytes=1-\r\n\r\n"
             b"MKCOL /dev1/p/ HTTP/1.1\r\n\r\n"
             b"DELETE /dev1/p/a HTTP/1.1\r\n\r\n"
             b"HEAD /dev1/p/a HTTP/1.1\r\n\r\n"
             b"GET /dev1/p/b HTTP/1.0\r\n\r\n"
             b"GET /dev1/p/b HTTP/1.1\r\n\r\n")  # after a close: discarded
    with d.conn() as c:
        c.send(batch)
        got = [(r.status, r.body) for r in (c.response(head_only=(i == 6)) for i in range(8))]
        assert got == [(201, b""), (201, b""), (200, b"abc"), (206, b"y"), (400, b""), (204, b""),
                       (404, b""), (200, b"xy")]
        assert c.at_eof()


def test_keepalive_survives_many_sequential_requests(d: Daemon) -> None:
    """No per-connection request limit; HTTP/1.0 keep-alive the way the tracker pools it."""
    with d.conn() as c:
        for i in range(300):
            r = c.request(b"GET /dev1/f HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert r.body == b"file" and r.header("Connection") == b"keep-alive"


def test_client_leaving_mid_response_does_not_hurt(d: Daemon) -> None:
    """Clients vanishing during a large body (FIN or reset) leave the server serving others."""
    (d.docroot / "dev1" / "big").write_bytes(b"x" * (8 << 20))
    for linger in (False, True):
        s = d.http()
        s.sendall(b"GET /dev1/big HTTP/1.1\r\n\r\n" * 3)
        assert s.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        if linger:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    with d.conn() as c:
        assert c.request(b"GET /dev1/f HTTP/1.1\r\n\r\n").body == b"file"
    assert "Traceback" not in d.stderr()
